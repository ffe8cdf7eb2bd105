// Draws a meeting: the tile grid, the status line, the controls and the messages.
//
// `render` is called after every change and reconciles the DOM with the meeting's
// model by key, so a tile's <video> keeps playing across renders and is touched
// only when its track changes.

import { icon } from './icons.js';

const $ = (id) => document.getElementById(id);

const STATUS_TEXT = {
  idle: 'Idle',
  joining: 'Connecting…',
  joined: 'Connected',
  reconnecting: 'Reconnecting…',
  left: 'Left',
};

const TILE_GAP = 10;
const TILE_ASPECT = 16 / 9;

export class View {
  constructor() {
    this.tiles = new Map();
    this.sinks = new Map();
    this.count = 0;
    for (const el of document.querySelectorAll('[data-icon]')) {
      el.innerHTML = icon(el.dataset.icon);
    }
    new ResizeObserver(() => this.layout()).observe($('stage'));
  }

  /** Shows one of the three screens: 'lobby', 'meeting' or 'farewell'. */
  show(screen) {
    for (const id of ['lobby', 'meeting', 'farewell']) $(id).hidden = id !== screen;
  }

  lobbyError(message) {
    $('lobby-error').textContent = message ?? '';
    $('lobby-error').hidden = !message;
  }

  farewell(message) {
    $('farewell-title').textContent = message ? 'Disconnected' : 'You left the meeting';
    $('farewell-text').textContent = message ?? 'Thanks for joining.';
    this.show('farewell');
  }

  render(meeting) {
    const status = $('status');
    status.dataset.state = meeting.state;
    let text = STATUS_TEXT[meeting.state];
    if (meeting.state === 'reconnecting' && meeting.attempt > 1) {
      text = `Reconnecting… (attempt ${meeting.attempt})`;
    }
    $('status-text').textContent = text;
    $('room-label').textContent = meeting.room;
    const people = meeting.participants.size + 1;
    $('count').textContent = `${people} ${people === 1 ? 'person' : 'people'}`;
    $('notice').textContent = meeting.notice ?? '';
    $('notice').hidden = !meeting.notice;

    this.renderControls(meeting);
    this.syncTiles(tilesOf(meeting));
    this.syncSinks(meeting);
    this.meeting = meeting;
    this.reportSizes();
  }

  /** Tells the meeting the size, in device pixels, of every received video's tile. */
  reportSizes() {
    const scale = window.devicePixelRatio || 1;
    for (const el of this.tiles.values()) {
      const { trackId } = el.dataset;
      if (!trackId || el.clientWidth === 0) continue;
      this.meeting?.showAt(trackId, el.clientWidth * scale, el.clientHeight * scale);
    }
  }

  renderControls(meeting) {
    const { audio, video, screen } = meeting.publications;
    setToggle($('toggle-mic'), audio, audio?.muted, ['Mute', 'Unmute'], ['mic', 'micOff']);
    setToggle($('toggle-camera'), video, video?.muted, ['Stop video', 'Start video'],
      ['camera', 'cameraOff']);
    const canShare = Boolean(navigator.mediaDevices?.getDisplayMedia);
    const share = $('toggle-screen');
    share.hidden = !canShare;
    share.disabled = meeting.state !== 'joined' && !screen;
    share.setAttribute('aria-pressed', String(Boolean(screen)));
    share.querySelector('.label').textContent = screen ? 'Stop sharing' : 'Share screen';
  }

  syncTiles(wanted) {
    const stage = $('stage');
    const keys = new Set(wanted.map((t) => t.key));
    for (const [key, el] of this.tiles) {
      if (!keys.has(key)) {
        el.remove();
        this.tiles.delete(key);
      }
    }
    wanted.forEach((tile, index) => {
      let el = this.tiles.get(tile.key);
      if (!el) {
        el = createTile();
        this.tiles.set(tile.key, el);
      }
      updateTile(el, tile);
      // Keep the DOM in model order: yourself first, then by arrival.
      if (stage.children[index] !== el) stage.insertBefore(el, stage.children[index] ?? null);
    });
    if (wanted.length !== this.count) {
      this.count = wanted.length;
      this.layout();
    }
  }

  /** One hidden <audio> per received audio track, so every voice is heard. */
  syncSinks(meeting) {
    const wanted = new Map();
    for (const entry of meeting.remote.values()) {
      if (entry.kind === 'audio' && entry.track) wanted.set(entry.mid, entry.track);
    }
    for (const [mid, el] of this.sinks) {
      if (wanted.get(mid) !== el.track) {
        el.srcObject = null;
        el.remove();
        this.sinks.delete(mid);
      }
    }
    for (const [mid, track] of wanted) {
      if (this.sinks.has(mid)) continue;
      const el = document.createElement('audio');
      el.autoplay = true;
      el.track = track;
      el.srcObject = new MediaStream([track]);
      $('audio-sinks').append(el);
      this.sinks.set(mid, el);
    }
  }

  clear() {
    this.syncTiles([]);
    for (const el of this.sinks.values()) el.remove();
    this.sinks.clear();
  }

  /** Sizes tiles so that all of them fit the stage as large as possible. */
  layout() {
    const stage = $('stage');
    const n = Math.max(1, this.count);
    const width = stage.clientWidth - 2 * TILE_GAP;
    const height = stage.clientHeight - 2 * TILE_GAP;
    if (width <= 0 || height <= 0) return;
    let best = 0;
    for (let cols = 1; cols <= n; cols += 1) {
      const rows = Math.ceil(n / cols);
      const w = Math.min(
        (width - (cols - 1) * TILE_GAP) / cols,
        ((height - (rows - 1) * TILE_GAP) / rows) * TILE_ASPECT,
      );
      best = Math.max(best, w);
    }
    stage.style.setProperty('--tile-width', `${Math.floor(best)}px`);
    this.reportSizes();
  }
}

/** The tiles a meeting shows, in order: ours, then everyone else's. */
function tilesOf(meeting) {
  const tiles = [];
  const { audio, video, screen } = meeting.publications;
  const me = meeting.participantId;
  tiles.push({
    key: 'local', participantId: me, name: `${meeting.name || 'You'} (you)`, local: true,
    video: video && !video.muted ? video.track : null,
    micOff: !audio || audio.muted, speaking: Boolean(me) && meeting.speaker === me,
  });
  if (screen) {
    tiles.push({ key: 'local:screen', participantId: me, name: 'Your screen', screen: true,
      video: screen.track });
  }

  const received = [...meeting.remote.values()].filter((r) => r.track && r.kind === 'video');
  for (const p of meeting.participants.values()) {
    const infos = [...p.tracks.values()];
    const mic = infos.find((t) => t.kind === 'audio' && t.source !== 'screen_share_audio');
    const name = p.name || p.identity || 'Guest';
    const mine = received.filter((r) => meeting.ownerOf(r) === p.id);
    const sourceOf = (r) => p.tracks.get(r.trackId)?.source;
    const camera = mine.find((r) => sourceOf(r) !== 'screen_share');
    const cameraInfo = camera && p.tracks.get(camera.trackId);
    tiles.push({
      key: p.id, participantId: p.id, name, trackId: camera?.trackId,
      video: camera && !cameraInfo?.muted && !camera.paused ? camera.track : null,
      micOff: !mic || mic.muted, speaking: meeting.speaker === p.id,
      pinned: meeting.pinned.has(p.id), slow: camera?.pausedFor === 'bandwidth',
    });
    for (const share of mine.filter((r) => sourceOf(r) === 'screen_share')) {
      tiles.push({ key: `${p.id}:${share.trackId}`, participantId: p.id, trackId: share.trackId,
        name: `${name}'s screen`, screen: true, video: share.track });
    }
  }
  return tiles;
}

function createTile() {
  const el = document.createElement('div');
  el.className = 'tile';
  const video = document.createElement('video');
  video.autoplay = true;
  video.playsInline = true;
  video.muted = true;
  const avatar = document.createElement('div');
  avatar.className = 'avatar';
  const plate = document.createElement('div');
  plate.className = 'nameplate';
  plate.innerHTML = `<span class="mic-off" title="Muted">${icon('micOff')}</span>` +
    '<span class="name"></span>';
  el.append(video, avatar, plate);
  return el;
}

function updateTile(el, tile) {
  el.dataset.key = tile.key;
  if (tile.participantId) el.dataset.participant = tile.participantId;
  // A received video's tile reports its size, so that the server sends a layer to fit.
  if (tile.trackId && tile.video) el.dataset.trackId = tile.trackId;
  else delete el.dataset.trackId;
  el.classList.toggle('local', Boolean(tile.local));
  el.classList.toggle('screen', Boolean(tile.screen));
  el.classList.toggle('speaking', Boolean(tile.speaking));
  el.classList.toggle('pinned', Boolean(tile.pinned));
  el.classList.toggle('no-video', !tile.video);
  el.classList.toggle('muted', Boolean(tile.micOff) && !tile.screen);
  el.classList.toggle('slow', Boolean(tile.slow));
  el.title = tile.slow ? 'Video paused: the connection is too slow for it' : '';
  el.querySelector('.name').textContent = tile.name;
  el.querySelector('.avatar').textContent = initials(tile.name);

  const video = el.querySelector('video');
  if (video.track !== tile.video) {
    video.track = tile.video;
    video.srcObject = tile.video ? new MediaStream([tile.video]) : null;
  }
}

function setToggle(button, pub, muted, labels, icons) {
  button.disabled = !pub;
  button.setAttribute('aria-pressed', String(Boolean(muted)));
  button.classList.toggle('off', !pub || Boolean(muted));
  button.querySelector('.label').textContent = muted || !pub ? labels[1] : labels[0];
  const name = muted || !pub ? icons[1] : icons[0];
  const holder = button.querySelector('.icon');
  if (holder.dataset.icon !== name) {
    holder.dataset.icon = name;
    holder.innerHTML = icon(name);
  }
}

function initials(name) {
  const words = name.replace(/\(you\)|'s screen/g, '').trim().split(/\s+/).filter(Boolean);
  const letters = words.length > 1 ? words[0][0] + words[words.length - 1][0] : words[0] ?? '?';
  return letters.slice(0, 2).toUpperCase();
}
