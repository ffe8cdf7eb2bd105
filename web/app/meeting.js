// One person's stay in one room, across reconnections.
//
// The meeting owns the model the page shows: who is in the room and which tracks
// they publish (from the server's messages), which received media belongs to whom
// (by transceiver mid), and what we publish ourselves. A connection that drops
// after `joined` is replaced by a new one after a backoff, and our tracks are
// published again on it; a connection refused before `joined` ends the attempt
// with a message that says why, as far as a browser can tell.
//
// States: idle -> joining -> joined <-> reconnecting; any -> left. A join that
// fails returns to idle with `error` set; a session the server ends for good goes
// to left with `error` set.

import { Connection } from './connection.js';
import { LocalMedia } from './media.js';
import { StatsSampler } from './stats.js';

/** The server's rule for room names. */
export const ROOM_NAME = /^[A-Za-z0-9._-]{1,128}$/;

const STATS_EVERY_MS = 1000;
/** A peer connection that stays disconnected this long is given up. */
const DISCONNECTED_GRACE_MS = 15000;
/** How long tile sizes must stay put before the server is told (a resize sends many). */
const SIZE_SETTLE_MS = 300;
const BACKOFF_MS = [300, 1000, 2000, 4000, 8000];
const MAX_RECONNECT_ATTEMPTS = 25;

/** Why a session ended for good, by the server's leave reason. */
const FINAL_LEAVES = {
  duplicate_identity: 'You joined this room from another tab or device, so this one was ' +
    'disconnected.',
  room_closed: 'The room was closed.',
  protocol_violation: 'The server ended the session after a protocol error.',
  removed: 'An operator removed you from the meeting.',
};

/** Join refusals that a later attempt may get past (the cluster is recovering). */
const RETRYABLE_ERRORS = new Set([
  'cluster_unavailable', 'node_fenced', 'no_node_available', 'stale_epoch', 'internal',
]);
/** Redirects followed in a row before falling back to the usual reconnection. */
const MAX_REDIRECTS = 4;

export class Meeting {
  /**
   * @param {{room: string, name: string, identity: string, token: string|null,
   *          onChange: () => void}} options; without a token one is asked of the
   *          server's development endpoint
   */
  constructor({ room, name, identity, token, onChange }) {
    this.room = room;
    this.name = name;
    this.identity = identity;
    this.token = token;
    this.devToken = !token;
    this.onChange = onChange;

    this.state = 'idle';
    this.error = null;
    this.notice = null;
    this.participantId = null;
    /** Everyone else: id -> {id, identity, name, tracks: Map<trackId, TrackInfo>}. */
    this.participants = new Map();
    /** Received media by transceiver mid: {mid, trackId, participantId, kind, track, stats}. */
    this.remote = new Map();
    /** What we publish: audio, video and screen, each {source, track, stream, ...}. */
    this.publications = { audio: null, video: null, screen: null };
    this.media = new LocalMedia();
    this.conn = null;
    this.reconnects = 0;
    this.attempt = 0;
    this.redirects = 0;
    this.freshTokenTried = false;
    /** The dominant speaker and everyone speaking now, as the server hears them. */
    this.speaker = null;
    this.speakers = [];
    /** Participants whose cameras we want even when last-N holds them back. */
    this.pinned = new Set();
    /** The page is out of sight (a background tab, a minimised window): no video wanted. */
    this.outOfSight = false;
    /** The track ids last sent in `hide`, sorted and joined, as the server holds them. */
    this.hiddenSent = '';
    /** Received videos' tile sizes: as the server holds them, and waiting to be sent. */
    this.sizesSent = new Map();
    this.sizesDue = new Map();

    this.timers = { retry: null, stats: null, disconnected: null, sizes: null };
    this.sampler = new StatsSampler();
  }

  get url() {
    return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}`;
  }

  async join() {
    this.state = 'joining';
    this.changed();
    if (this.devToken) {
      try {
        this.token = await fetchDevToken(this.room, this.identity, this.name);
      } catch (e) {
        return this.fail('idle', e.message);
      }
    }
    this.notice = await this.media.start();
    if (this.state !== 'joining') return this.media.stop();
    for (const kind of ['audio', 'video']) {
      if (this.media[kind]) this.publications[kind] = this.cameraOrMic(kind);
    }
    this.timers.stats = setInterval(() => this.sampleStats(), STATS_EVERY_MS);
    this.connect();
  }

  cameraOrMic(kind) {
    const source = kind === 'audio' ? 'microphone' : 'camera';
    return {
      source, kind, name: source, muted: false, track: this.media[kind],
      stream: this.media.stream, serverTrackId: null,
    };
  }

  /** Opens a session; `redirect` ({url, epoch}) follows a server's redirect. */
  connect(redirect = null) {
    const conn = new Connection({
      url: redirect ? redirect.url : this.url,
      room: this.room,
      token: this.token,
      listener: (e) => this.onEvent(conn, e),
      redirected: redirect ? { epoch: redirect.epoch } : undefined,
    });
    this.conn = conn;
  }

  onEvent(conn, e) {
    // Events of a connection we already gave up are stale.
    if (conn !== this.conn) return;
    switch (e.type) {
      case 'message': this.onMessage(e.msg); break;
      case 'track': this.onTrack(e); break;
      case 'subscribed': this.onSubscribed(e); break;
      case 'peer-state': this.onPeerState(e.state); break;
      case 'closed': this.onClosed(e); break;
    }
    this.changed();
  }

  onMessage(msg) {
    switch (msg.type) {
      case 'joined': return this.onJoined(msg);
      case 'participant_joined': return this.addParticipant(msg.participant);
      case 'participant_left': return this.removeParticipant(msg.participant_id);
      case 'track_published': return this.onTrackPublished(msg.track);
      case 'track_unpublished': return this.onTrackUnpublished(msg.track_id, msg.participant_id);
      case 'track_muted': return this.onTrackMuted(msg.track_id, msg.muted);
      case 'speakers_changed': return this.onSpeakers(msg.dominant, msg.speakers);
      case 'track_paused': return this.onTrackPaused(msg.track_id, msg.paused, msg.reason);
      case 'error':
        if (msg.code === 'permission_denied' && msg.request === 'publish_track') {
          this.notice = 'Your access token does not allow publishing: others cannot see or ' +
            'hear you.';
        }
        return undefined;
    }
    return undefined;
  }

  onJoined(msg) {
    if (this.state === 'reconnecting') this.reconnects += 1;
    this.state = 'joined';
    this.attempt = 0;
    this.redirects = 0;
    this.freshTokenTried = false;
    this.participantId = msg.participant.id;
    this.participants.clear();
    // A new session hides nothing until told; `changed` tells it again.
    this.hiddenSent = '';
    this.sizesSent.clear();
    for (const p of msg.participants) this.addParticipant(p);
    for (const pub of Object.values(this.publications)) {
      if (pub) this.publish(pub);
    }
    // Pins of participants who are still here carry over a reconnection.
    for (const id of this.pinned) {
      if (!this.participants.has(id)) this.pinned.delete(id);
    }
    if (this.pinned.size > 0) this.sendPins();
  }

  /** Pins or unpins someone's camera: a pinned camera is never held back by last-N. */
  togglePin(participantId) {
    if (!this.participants.has(participantId)) return;
    if (this.pinned.has(participantId)) this.pinned.delete(participantId);
    else this.pinned.add(participantId);
    this.sendPins();
    this.changed();
  }

  sendPins() {
    this.conn?.send({ type: 'pin', participant_ids: [...this.pinned] });
  }

  publish(pub) {
    pub.serverTrackId = null;
    this.conn.publish(pub);
  }

  addParticipant(info) {
    const tracks = new Map(info.tracks.map((t) => [t.id, t]));
    this.participants.set(info.id, { id: info.id, identity: info.identity, name: info.name, tracks });
  }

  removeParticipant(id) {
    this.participants.delete(id);
    for (const [mid, entry] of this.remote) {
      if (this.ownerOf(entry) === id) this.remote.delete(mid);
    }
  }

  onTrackPublished(track) {
    if (track.participant_id === this.participantId) {
      const pub = Object.values(this.publications).find((p) => p?.track?.id === track.cid);
      if (!pub) return;
      pub.serverTrackId = track.id;
      // The person may have muted while the track was on its way.
      if (pub.muted !== track.muted) this.sendMute(pub);
      return;
    }
    let p = this.participants.get(track.participant_id);
    if (!p) {
      p = { id: track.participant_id, identity: '', name: '', tracks: new Map() };
      this.participants.set(p.id, p);
    }
    p.tracks.set(track.id, track);
  }

  onTrackUnpublished(trackId, participantId) {
    this.participants.get(participantId)?.tracks.delete(trackId);
    for (const [mid, entry] of this.remote) {
      if (entry.trackId === trackId) this.remote.delete(mid);
    }
  }

  onTrackMuted(trackId, muted) {
    for (const p of this.participants.values()) {
      const info = p.tracks.get(trackId);
      if (info) info.muted = muted;
    }
  }

  onTrack({ mid, track, participantId, trackId, kind }) {
    const entry = this.remote.get(mid) ?? { mid, stats: null };
    Object.assign(entry, { track, kind, participantId, trackId: trackId ?? entry.trackId });
    this.remote.set(mid, entry);
  }

  onSubscribed({ mid, trackId }) {
    const entry = this.remote.get(mid);
    if (entry) entry.trackId = trackId;
    else this.remote.set(mid, { mid, trackId, track: null, participantId: null, stats: null });
  }

  onPeerState(state) {
    clearTimeout(this.timers.disconnected);
    if (state === 'failed' || state === 'disconnected') {
      console.warn(`relais: media connection ${state}`);
    }
    if (state === 'failed') {
      this.conn.close({ leave: false });
    } else if (state === 'disconnected') {
      const conn = this.conn;
      this.timers.disconnected = setTimeout(() => {
        if (conn === this.conn) conn.close({ leave: false });
      }, DISCONNECTED_GRACE_MS);
    }
  }

  async onClosed({ joined, leaveReason, errorCode, redirect }) {
    this.conn = null;
    this.remote.clear();
    for (const pub of Object.values(this.publications)) {
      if (pub) pub.serverTrackId = null;
    }
    if (this.state === 'left') return;
    if (redirect && this.redirects < MAX_REDIRECTS) {
      // Another node serves the room: go there at once.
      this.redirects += 1;
      return this.connect(redirect);
    }
    this.redirects = 0;
    if (leaveReason === 'migrate') {
      // The room moves to another node: come back at once; placement sends us on.
      this.state = 'reconnecting';
      return this.connect();
    }
    if (!joined && RETRYABLE_ERRORS.has(errorCode)) {
      console.warn('relais: join refused for now', { errorCode });
      this.state = 'reconnecting';
      return this.scheduleReconnect();
    }
    if (errorCode === 'room_full') {
      return this.fail(this.reconnects || this.participantId ? 'left' : 'idle',
        'The room is full. Try again later.');
    }
    if (joined) {
      console.warn('relais: connection lost', { leaveReason, errorCode });
      const final = FINAL_LEAVES[leaveReason];
      return final ? this.fail('left', final) : this.scheduleReconnect();
    }
    await this.refused();
  }

  /** The socket closed before `joined`: find out why, as well as a browser can. */
  async refused() {
    const server = await probeServer();
    if (this.state === 'left') return;
    if (server === 'ready') {
      // The server is up, so it refused the socket: the token is the likely cause.
      if (this.devToken && !this.freshTokenTried) {
        this.freshTokenTried = true;
        try {
          this.token = await fetchDevToken(this.room, this.identity, this.name);
          if (this.state !== 'left') this.connect();
          return;
        } catch (e) {
          return this.fail(this.participantId ? 'left' : 'idle', e.message);
        }
      }
      return this.fail(this.participantId ? 'left' : 'idle',
        'Could not join: the access token is invalid or has expired.');
    }
    if (this.state === 'reconnecting') return this.scheduleReconnect();
    this.fail('idle', server === 'down'
      ? `Could not reach the server at ${location.host}.`
      : 'The server is starting or shutting down; try again in a moment.');
  }

  scheduleReconnect() {
    if (this.attempt >= MAX_RECONNECT_ATTEMPTS) {
      return this.fail('left', 'Lost the connection to the server.');
    }
    this.state = 'reconnecting';
    const base = BACKOFF_MS[Math.min(this.attempt, BACKOFF_MS.length - 1)];
    this.attempt += 1;
    // Jitter keeps a room's participants from coming back all at the same instant.
    const delay = base * (0.8 + Math.random() * 0.4);
    this.timers.retry = setTimeout(() => {
      if (this.state === 'reconnecting') this.connect();
    }, delay);
    this.changed();
    return undefined;
  }

  fail(state, message) {
    this.error = message;
    this.shutdown();
    this.state = state;
    this.changed();
  }

  leave() {
    if (this.state === 'left') return;
    this.shutdown({ leave: true });
    this.state = 'left';
    this.changed();
  }

  shutdown({ leave = false } = {}) {
    this.state = 'left';
    for (const timer of Object.values(this.timers)) {
      clearTimeout(timer);
      clearInterval(timer);
    }
    const conn = this.conn;
    this.conn = null;
    conn?.close({ leave });
    this.publications.screen?.track.stop();
    this.publications = { audio: null, video: null, screen: null };
    this.media.stop();
    this.remote.clear();
    this.participants.clear();
    this.speaker = null;
    this.speakers = [];
  }

  /**
   * Last-N, `hide` or a slow downlink paused or resumed a received video: its tile shows
   * the avatar meanwhile, and says so when the downlink is the reason.
   */
  onTrackPaused(trackId, paused, reason) {
    for (const entry of this.remote.values()) {
      if (entry.trackId !== trackId) continue;
      entry.paused = paused;
      entry.pausedFor = paused ? reason ?? null : null;
    }
    this.changed();
  }

  onSpeakers(dominant, speakers) {
    this.speaker = dominant ?? null;
    this.speakers = speakers ?? [];
    this.changed();
  }

  toggle(kind) {
    const pub = this.publications[kind];
    if (!pub) return;
    pub.muted = !pub.muted;
    pub.track.enabled = !pub.muted;
    this.sendMute(pub);
    this.changed();
  }

  sendMute(pub) {
    if (this.conn && pub.serverTrackId) {
      this.conn.send({ type: 'mute', track_id: pub.serverTrackId, muted: pub.muted });
    }
  }

  async toggleScreen() {
    if (this.publications.screen) return this.stopScreen();
    const captured = await this.media.captureScreen();
    if (!captured || this.state === 'left') {
      captured?.track.stop();
      return undefined;
    }
    const pub = {
      source: 'screen_share', kind: 'video', name: 'screen', muted: false, serverTrackId: null,
      ...captured,
    };
    // The browser's own "stop sharing" button ends the track.
    pub.track.addEventListener('ended', () => {
      if (this.publications.screen === pub) this.stopScreen();
    });
    this.publications.screen = pub;
    if (this.conn && this.state === 'joined') this.publish(pub);
    this.changed();
    return undefined;
  }

  stopScreen() {
    const pub = this.publications.screen;
    if (!pub) return;
    this.publications.screen = null;
    this.conn?.unpublish(pub, pub.serverTrackId);
    pub.track.stop();
    this.changed();
  }

  async switchDevice(kind, deviceId) {
    const track = await this.media.switchDevice(kind, deviceId);
    let pub = this.publications[kind];
    if (!pub) {
      pub = this.cameraOrMic(kind);
      this.publications[kind] = pub;
      if (this.conn && this.state === 'joined') this.publish(pub);
    } else {
      pub.track = track;
      // The server keeps the same track: only the source of its frames changes.
      await this.conn?.replaceTrack(pub, track);
    }
    this.changed();
  }

  async sampleStats() {
    const conn = this.conn;
    if (!conn || this.state !== 'joined') return;
    const { inbound } = await this.sampler.sample(conn.pc);
    if (conn !== this.conn) return;
    for (const s of inbound) {
      const entry = this.remote.get(s.mid) ??
        [...this.remote.values()].find((r) => r.track?.id === s.trackIdentifier);
      if (entry) entry.stats = s;
    }
    this.changed();
  }

  /** The participant a received track belongs to. */
  ownerOf(entry) {
    for (const p of this.participants.values()) {
      if (entry.trackId && p.tracks.has(entry.trackId)) return p.id;
    }
    return entry.participantId;
  }

  changed() {
    this.syncHidden();
    this.onChange();
  }

  /**
   * The size, in device pixels, at which a received video is shown: of a camera sent
   * in layers the server picks the one that fits. Sent once the layout has settled.
   */
  showAt(trackId, width, height) {
    const size = { width: Math.max(1, Math.round(width)), height: Math.max(1, Math.round(height)) };
    const sent = this.sizesSent.get(trackId);
    if (sent && sent.width === size.width && sent.height === size.height) {
      this.sizesDue.delete(trackId);
      return;
    }
    this.sizesDue.set(trackId, size);
    clearTimeout(this.timers.sizes);
    this.timers.sizes = setTimeout(() => this.sendSizes(), SIZE_SETTLE_MS);
  }

  sendSizes() {
    if (this.state !== 'joined') return;
    for (const [trackId, size] of this.sizesDue) {
      this.sizesSent.set(trackId, size);
      this.conn?.send({ type: 'track_size', track_id: trackId, ...size });
    }
    this.sizesDue.clear();
  }

  /** The page went out of sight or came back. */
  setOutOfSight(hidden) {
    this.outOfSight = hidden;
    this.changed();
  }

  /** Tells the server which video not to send: all of it while nobody sees the page. */
  syncHidden() {
    if (this.state !== 'joined') return;
    const ids = [];
    if (this.outOfSight) {
      for (const p of this.participants.values()) {
        for (const [id, info] of p.tracks) if (info.kind === 'video') ids.push(id);
      }
    }
    // The server takes at most 256.
    const key = ids.sort().slice(0, 256).join(' ');
    if (key === this.hiddenSent) return;
    this.hiddenSent = key;
    this.conn?.send({ type: 'hide', track_ids: key ? key.split(' ') : [] });
  }

  /** A read-only snapshot for tests and integrators. */
  status() {
    const participants = [...this.participants.values()].map((p) => ({
      id: p.id,
      identity: p.identity,
      name: p.name,
      tracks: [...p.tracks.values()].map((t) => ({
        id: t.id, kind: t.kind, source: t.source, name: t.name, muted: t.muted,
      })),
    }));
    const remote = [...this.remote.values()]
      .filter((r) => r.track && r.trackId)
      .map((r) => ({
        mid: r.mid,
        trackId: r.trackId,
        participantId: this.ownerOf(r),
        kind: r.kind,
        framesDecoded: r.stats?.framesDecoded ?? 0,
        frameWidth: r.stats?.frameWidth ?? 0,
        packetsReceived: r.stats?.packetsReceived ?? 0,
        bytesReceived: r.stats?.bytesReceived ?? 0,
        paused: Boolean(r.paused),
      }));
    return deepFreeze({
      state: this.state,
      room: this.room,
      participantId: this.participantId,
      participants,
      remote,
      reconnects: this.reconnects,
      speaker: this.speaker,
      speakers: this.speakers,
      pinned: [...this.pinned],
      sizes: [...this.sizesSent].map(([trackId, size]) => ({ trackId, ...size })),
      error: this.error,
    });
  }
}

/** Asks the development endpoint for a token; throws an Error with a message for people. */
export async function fetchDevToken(room, identity, name) {
  const query = new URLSearchParams({ room, identity, name });
  let response;
  try {
    response = await fetch(`/dev/token?${query}`, { cache: 'no-store' });
  } catch {
    throw new Error(`Could not reach the server at ${location.host}.`);
  }
  const body = await response.json().catch(() => ({}));
  if (response.ok && body.token) return body.token;
  if (response.status === 404) {
    throw new Error('This server needs an access token to join. Open the meeting link you ' +
      'were given, or add ?token=… to the address.');
  }
  throw new Error(body.message ? `Could not join: ${body.message}.` : 'Could not get a token.');
}

/** 'ready', 'not_ready' or 'down'. */
async function probeServer() {
  try {
    const response = await fetch('/readyz', { cache: 'no-store' });
    return response.ok ? 'ready' : 'not_ready';
  } catch {
    return 'down';
  }
}

function deepFreeze(value) {
  if (value && typeof value === 'object') {
    Object.values(value).forEach(deepFreeze);
    Object.freeze(value);
  }
  return value;
}
