// The page's entry point: the join form, the controls, and `window.relais`.
//
// The room is kept in the address (`/?room=NAME`) so the link can be shared. An
// integrator may add `&token=...`; without one the page asks the server's
// development endpoint, which exists only in dev mode.

import { Meeting, ROOM_NAME } from './meeting.js';
import { View } from './view.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const urlToken = params.get('token');
const view = new View();

/** The meeting in progress, or the last one. */
let meeting = null;

// A read-only view of the session, refreshed as it changes, for tests and embedders.
Object.defineProperty(window, 'relais', {
  get: () => (meeting ? meeting.status() : Object.freeze({
    state: 'idle', participantId: null, participants: [], remote: [], reconnects: 0,
  })),
});

function start() {
  $('room').value = params.get('room') ?? '';
  $('name').value = localStorage.getItem('relais.name') ?? '';
  // With a token the server takes the name from it.
  if (urlToken) {
    $('name').closest('form').classList.add('with-token');
    $('name').required = false;
  }
  $('join-form').addEventListener('submit', (e) => {
    e.preventDefault();
    join();
  });
  $('rejoin').addEventListener('click', () => join());
  $('leave').addEventListener('click', () => meeting?.leave());
  $('toggle-mic').addEventListener('click', () => meeting?.toggle('audio'));
  $('toggle-camera').addEventListener('click', () => meeting?.toggle('video'));
  $('toggle-screen').addEventListener('click', () => shareScreen());
  $('toggle-devices').addEventListener('click', () => toggleDevices());
  $('copy-link').addEventListener('click', () => copyLink());
  // Clicking someone's tile pins their camera, clicking again unpins it.
  $('stage').addEventListener('click', (e) => {
    const tile = e.target.closest('.tile');
    if (tile && !tile.classList.contains('local')) meeting?.togglePin(tile.dataset.participant);
  });
  // A page nobody sees receives no video: a background tab costs the network nothing.
  document.addEventListener('visibilitychange', () => meeting?.setOutOfSight(document.hidden));
  $('notice').addEventListener('click', () => {
    if (meeting) meeting.notice = null;
    $('notice').hidden = true;
  });
  for (const [id, kind] of [['camera-select', 'video'], ['mic-select', 'audio']]) {
    $(id).addEventListener('change', (e) => switchDevice(kind, e.target.value));
  }
  view.show('lobby');
  $(params.get('room') ? 'name' : 'room').focus();
}

function join() {
  const room = $('room').value.trim();
  const name = $('name').value.trim();
  if (!ROOM_NAME.test(room)) {
    return view.lobbyError('Room names are 1 to 128 letters, digits, dots, dashes or ' +
      'underscores, with no spaces.');
  }
  if (!urlToken && !name) return view.lobbyError('Please enter your name.');
  view.lobbyError(null);
  localStorage.setItem('relais.name', name);
  const query = new URLSearchParams({ room });
  if (urlToken) query.set('token', urlToken);
  history.replaceState(null, '', `/?${query}`);

  meeting?.leave();
  const current = new Meeting({
    room, name, identity: identity(), token: urlToken, onChange: () => changed(current),
  });
  meeting = current;
  current.outOfSight = document.hidden;
  view.show('meeting');
  current.join();
  return undefined;
}

/** Follows the meeting from screen to screen. */
function changed(current) {
  if (current !== meeting) return;
  if (current.state === 'idle' && current.error) {
    view.clear();
    view.show('lobby');
    view.lobbyError(current.error);
    return;
  }
  if (current.state === 'left') {
    view.clear();
    $('devices').hidden = true;
    view.farewell(current.error);
    return;
  }
  view.render(current);
}

/** A stable identity per browser tab: a reload replaces the tab's old session. */
function identity() {
  let id = sessionStorage.getItem('relais.identity');
  if (!id) {
    const bytes = crypto.getRandomValues(new Uint8Array(6));
    id = `guest-${[...bytes].map((b) => b.toString(16).padStart(2, '0')).join('')}`;
    sessionStorage.setItem('relais.identity', id);
  }
  return id;
}

async function shareScreen() {
  try {
    await meeting?.toggleScreen();
  } catch (e) {
    meeting.notice = `Screen sharing failed: ${e.message}`;
    changed(meeting);
  }
}

async function toggleDevices() {
  const panel = $('devices');
  panel.hidden = !panel.hidden;
  $('toggle-devices').setAttribute('aria-expanded', String(!panel.hidden));
  if (panel.hidden || !meeting) return;
  const { cameras, mics, camera, mic } = await meeting.media.devices();
  fillSelect($('camera-select'), cameras, camera, 'No camera');
  fillSelect($('mic-select'), mics, mic, 'No microphone');
}

function fillSelect(select, devices, current, none) {
  select.replaceChildren(...devices.map((d, i) => {
    const option = new Option(d.label || `Device ${i + 1}`, d.deviceId);
    option.selected = d.deviceId === current;
    return option;
  }));
  if (devices.length === 0) select.append(new Option(none, ''));
  select.disabled = devices.length === 0;
}

async function switchDevice(kind, deviceId) {
  if (!meeting || !deviceId) return;
  try {
    await meeting.switchDevice(kind, deviceId);
  } catch (e) {
    meeting.notice = `Could not switch to that device: ${e.message}`;
    changed(meeting);
  }
}

async function copyLink() {
  // The token stays out of shared links: it is this person's own.
  const link = `${location.origin}/?${new URLSearchParams({ room: meeting?.room ?? '' })}`;
  const button = $('copy-link');
  try {
    await navigator.clipboard.writeText(link);
    button.textContent = 'Link copied';
  } catch {
    button.textContent = link;
  }
  setTimeout(() => { button.textContent = 'Copy link'; }, 2500);
}

start();
