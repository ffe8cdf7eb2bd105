// One attempt at being in a room: a signaling socket and the peer connection it
// negotiates. A connection never retries; the meeting builds a new one instead.
//
// The page subscribes by itself (`auto_subscribe: false`) to every track of the
// others, but only once its own first offer has been answered: the first offer
// then always comes from the browser, so the session's RTP header extension ids
// and DTLS roles are the browser's. When the server offers first, its extension
// ids differ from Chrome's defaults, and Chrome trips over them as soon as it
// adds m-lines of its own or rolls an offer back. It subscribes to one track at a
// time, the next once the previous is live: the server may report a track it
// added while one of its offers awaited an answer `subscribed` before the offer
// that carries it is answered, and such a subscription often never goes live.
//
// Negotiation follows the protocol: every offer, answer and candidate is applied
// in arrival order through one queue, and the page is the polite peer. When a
// server offer arrives while our own offer is pending we roll ours back, answer,
// and offer again; the server's `negotiation_glare` error for the refused offer
// needs no action. Published tracks ride on transceivers of their own (never one
// a server offer created); they also accept media, because the server may put a
// subscription on the m-line of a track we publish. When the server offered
// first, its RTP header extension ids are the bundle's, and our offers are adjusted
// to them (see `alignExtmapIds`).
//
// Everything the meeting needs to know goes to its one listener as a plain event:
//   {type: 'message', msg}             a server message other than offer/answer/candidate
//   {type: 'track', mid, track, participantId, trackId, kind}
//   {type: 'subscribed', mid, trackId}
//   {type: 'peer-state', state}
//   {type: 'closed', joined, leaveReason, errorCode, redirect}   the socket is gone, once
//                                      (`redirect` is {url, epoch} when another node
//                                      serves the room)

import { alignExtmapIds, msidOf, setupOf } from './sdp.js';

/** How often the socket is probed, and how long a probe may go unanswered. */
const PING_EVERY_MS = 10000;
const PONG_WITHIN_MS = 20000;
/** How long one subscription may take to go live before the next is asked for. */
const SUBSCRIBE_WITHIN_MS = 5000;
/**
 * A camera goes out in layers (rid simulcast), smallest first, each a fraction of the
 * captured size; the server sends each subscriber the one that fits its tile. As many
 * as the browser sends for that size: three from 540 lines up, two from 270 (a 360-line
 * camera sends 180 and 360), none below.
 */
const CAMERA_LAYERS = [
  { rid: 'q', scaleResolutionDownBy: 4 },
  { rid: 'h', scaleResolutionDownBy: 2 },
  { rid: 'f', scaleResolutionDownBy: 1 },
];

export class Connection {
  /**
   * @param {{url: string, room: string, token: string, listener: (e: object) => void,
   *          redirected?: {epoch?: number}}} options; `redirected` when following a
   *          server's `redirect`
   */
  constructor({ url, room, token, listener, redirected }) {
    this.listener = listener;
    this.joined = false;
    this.closed = false;
    this.leaveReason = null;
    this.errorCode = null;
    this.redirect = null;
    this.queue = Promise.resolve();
    // Local changes wait for an offer; one offer carries all made until it is sent.
    this.needsOffer = false;
    // Server track ids by transceiver mid, from `subscribed` or the remote SDP.
    this.trackIdByMid = new Map();
    /** Our sending transceivers, by the publication they carry. */
    this.senders = new Map();
    /** Our side of the DTLS session once negotiated: 'active' (client) or 'passive'. */
    this.setupRole = null;
    this.participantId = null;
    /** Others' tracks to subscribe to once our first offer is answered, in order. */
    this.unsubscribed = new Set();
    this.mayAsk = false;
    /** The track whose subscription is under way, and when we stop waiting for it. */
    this.asking = null;
    this.askTimer = null;
    this.pingId = 0;
    this.pongTimer = null;

    this.pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
    this.pc.onicecandidate = (e) => this.sendCandidate(e.candidate);
    this.pc.ontrack = (e) => this.onTrack(e);
    this.pc.onconnectionstatechange = () =>
      this.listener({ type: 'peer-state', state: this.pc.connectionState });

    const query = new URLSearchParams({ room, access_token: token });
    if (redirected) {
      query.set('redirected', '1');
      if (redirected.epoch != null) query.set('epoch', String(redirected.epoch));
    }
    this.socket = new WebSocket(`${url}/rtc?${query}`);
    this.socket.onopen = () => this.send({ type: 'join', auto_subscribe: false });
    this.socket.onmessage = (e) => this.onText(e.data);
    this.socket.onclose = () => this.finish();
    this.pinger = setInterval(() => this.ping(), PING_EVERY_MS);
  }

  send(msg) {
    if (this.socket.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify(msg));
    }
  }

  /**
   * Describes a local track to the server and adds it to the next offer.
   * @param {{track: MediaStreamTrack, stream: MediaStream, source: string, name: string,
   *          muted: boolean}} pub
   */
  publish(pub) {
    const { track, source, name, muted } = pub;
    const encodings = track.kind === 'video' && source === 'camera' ? encodingsOf(track) : [];
    const layers = encodings.length > 1 ? encodings.map((e) => e.layer) : undefined;
    this.send({ type: 'publish_track', cid: track.id, kind: track.kind, source, name, muted,
      layers });
    const sendEncodings = layers ? encodings.map((e) => e.encoding) : undefined;
    this.senders.set(pub, this.addSender(track, pub.stream, sendEncodings));
    this.negotiate();
  }

  addSender(track, stream, sendEncodings) {
    const init = { direction: 'sendrecv', streams: [stream] };
    if (sendEncodings) init.sendEncodings = sendEncodings;
    return this.pc.addTransceiver(track, init);
  }

  /** Stops sending a publication and tells the server it is gone. */
  unpublish(pub, serverTrackId) {
    const transceiver = this.senders.get(pub);
    this.senders.delete(pub);
    if (serverTrackId) this.send({ type: 'unpublish_track', track_id: serverTrackId });
    if (!transceiver || this.closed) return;
    transceiver.sender.replaceTrack(null).catch(() => {});
    this.pc.removeTrack(transceiver.sender);
    this.negotiate();
  }

  /** Sends another track of the same kind in a publication's place, without renegotiating. */
  async replaceTrack(pub, track) {
    await this.senders.get(pub)?.sender.replaceTrack(track);
  }

  /** Ends the session; with `leave` the server is told first and closes the socket. */
  close({ leave }) {
    if (this.closed) return;
    if (leave && this.socket.readyState === WebSocket.OPEN) {
      // The server closes the socket once it has processed `leave`; closing media
      // before that would look like a lost connection.
      this.send({ type: 'leave' });
      setTimeout(() => {
        this.socket.close();
        this.finish();
      }, 1500);
      return;
    }
    this.socket.close();
    this.finish();
  }

  finish() {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.pinger);
    clearTimeout(this.pongTimer);
    clearTimeout(this.askTimer);
    this.pc.close();
    this.listener({
      type: 'closed',
      joined: this.joined,
      leaveReason: this.leaveReason,
      errorCode: this.errorCode,
      redirect: this.redirect,
    });
  }

  ping() {
    this.pingId += 1;
    this.send({ type: 'ping', id: this.pingId });
    clearTimeout(this.pongTimer);
    // A socket that stopped carrying anything may take minutes to report it.
    this.pongTimer = setTimeout(() => {
      console.warn('relais: the server stopped answering pings');
      this.close({ leave: false });
    }, PONG_WITHIN_MS);
  }

  onText(text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      return;
    }
    switch (msg.type) {
      case 'offer':
        return this.onServerOffer(msg.sdp);
      case 'answer':
        return this.onServerAnswer(msg.sdp);
      case 'candidate':
        return this.onServerCandidate(msg);
      case 'pong':
        return clearTimeout(this.pongTimer);
      case 'joined':
        this.onJoined(msg);
        return;
      case 'track_published':
        if (msg.track.participant_id !== this.participantId) {
          this.unsubscribed.add(msg.track.id);
          this.subscribePending();
        }
        break;
      case 'track_unpublished':
        this.unsubscribed.delete(msg.track_id);
        if (this.asking === msg.track_id) this.askNext();
        break;
      case 'subscribed':
        this.trackIdByMid.set(msg.mid, msg.track_id);
        this.listener({ type: 'subscribed', mid: msg.mid, trackId: msg.track_id });
        if (this.asking === msg.track_id) this.askNext();
        return;
      case 'leave':
        this.leaveReason = msg.reason;
        break;
      case 'redirect':
        // The socket closes next; the meeting reconnects to the node named.
        this.redirect = { url: msg.url, epoch: msg.epoch };
        return;
      case 'error':
        this.onError(msg);
        break;
    }
    this.listener({ type: 'message', msg });
  }

  onJoined(msg) {
    this.joined = true;
    this.participantId = msg.participant.id;
    for (const p of msg.participants) {
      for (const track of p.tracks) this.unsubscribed.add(track.id);
    }
    // The meeting publishes its tracks while it handles `joined`.
    this.listener({ type: 'message', msg });
    if (this.senders.size === 0) this.allowSubscribing();
  }

  allowSubscribing() {
    this.mayAsk = true;
    this.subscribePending();
  }

  subscribePending() {
    if (!this.mayAsk || this.asking || this.closed) return;
    const [next] = this.unsubscribed;
    if (!next) return;
    this.unsubscribed.delete(next);
    this.asking = next;
    this.send({ type: 'subscribe', track_ids: [next] });
    // A subscription that never goes live must not hold up the others.
    this.askTimer = setTimeout(() => this.askNext(), SUBSCRIBE_WITHIN_MS);
  }

  askNext() {
    clearTimeout(this.askTimer);
    this.asking = null;
    this.subscribePending();
  }

  onError(msg) {
    if (!this.joined || msg.code === 'room_full') {
      this.errorCode = msg.code;
    }
    if (msg.request === 'subscribe' && this.asking) this.askNext();
    // Any other refusal of our offer leaves it pending forever: take it back.
    if (msg.request === 'offer' && msg.code !== 'negotiation_glare') {
      this.step(async () => {
        if (this.pc.signalingState === 'have-local-offer') {
          await this.pc.setLocalDescription({ type: 'rollback' });
        }
        // Receiving need not wait for a publication that will not happen.
        this.allowSubscribing();
      });
    }
  }

  /** Runs one negotiation step after all earlier ones. */
  step(fn) {
    this.queue = this.queue.then(fn).catch((e) => {
      if (!this.closed) console.warn('relais: negotiation step failed', e);
    });
  }

  negotiate() {
    this.needsOffer = true;
    this.step(() => this.offerIfNeeded());
  }

  /** Offers pending changes, unless a negotiation is under way: its end offers them. */
  async offerIfNeeded() {
    if (this.closed || !this.needsOffer || this.pc.signalingState !== 'stable') return;
    this.needsOffer = false;
    const offer = await this.pc.createOffer();
    const sdp = alignExtmapIds(offer.sdp, this.pc.remoteDescription?.sdp);
    await this.pc.setLocalDescription({ type: 'offer', sdp });
    this.send({ type: 'offer', sdp: this.pc.localDescription.sdp });
  }

  onServerOffer(sdp) {
    this.step(async () => {
      if (this.closed) return;
      if (this.pc.signalingState === 'have-local-offer') {
        await this.pc.setLocalDescription({ type: 'rollback' });
        this.needsOffer = true;
      }
      await this.pc.setRemoteDescription({ type: 'offer', sdp });
      await this.pc.setLocalDescription(await this.pc.createAnswer());
      this.setupRole ??= setupOf(this.pc.localDescription.sdp);
      this.send({ type: 'answer', sdp: this.pc.localDescription.sdp });
      await this.offerIfNeeded();
    });
  }

  onServerAnswer(sdp) {
    this.step(async () => {
      // An answer to an offer we rolled back is stale.
      if (this.closed || this.pc.signalingState !== 'have-local-offer') return;
      await this.pc.setRemoteDescription({ type: 'answer', sdp: this.keepSetupRole(sdp) });
      if (!this.mayAsk) this.allowSubscribing();
      await this.offerIfNeeded();
    });
  }

  /**
   * Reads a server answer with the DTLS roles the session already has. A server that
   * offered first may answer a later offer of ours with its default role, which is
   * then ours too; the running DTLS session keeps its roles whatever the SDP says,
   * but Chrome refuses such an answer.
   */
  keepSetupRole(sdp) {
    const theirs = setupOf(sdp);
    if (!this.setupRole) {
      this.setupRole = theirs === 'active' ? 'passive' : 'active';
      return sdp;
    }
    if (theirs !== this.setupRole) return sdp;
    const expected = this.setupRole === 'active' ? 'passive' : 'active';
    return sdp.replace(/^a=setup:\w+/gm, `a=setup:${expected}`);
  }

  onServerCandidate({ candidate, sdpMid, sdpMLineIndex }) {
    if (!candidate) return;
    const init = { candidate, sdpMid: sdpMid ?? null, sdpMLineIndex: sdpMLineIndex ?? 0 };
    this.step(async () => {
      if (this.closed || !this.pc.remoteDescription) return;
      // A candidate the browser cannot use is not worth ending the session for.
      await this.pc.addIceCandidate(init).catch(() => {});
    });
  }

  sendCandidate(candidate) {
    if (!candidate) {
      this.send({ type: 'candidate', candidate: '' });
      return;
    }
    this.send({
      type: 'candidate',
      candidate: candidate.candidate,
      sdpMid: candidate.sdpMid ?? undefined,
      sdpMLineIndex: candidate.sdpMLineIndex ?? undefined,
    });
  }

  onTrack(e) {
    const mid = e.transceiver.mid;
    const msid = msidOf(this.pc.remoteDescription?.sdp ?? '', mid);
    // The stream id is the publisher's participant id; the track id is the server's.
    const participantId = e.streams[0]?.id ?? msid?.streamId ?? null;
    const trackId = msid?.trackId ?? this.trackIdByMid.get(mid) ?? null;
    this.listener({ type: 'track', mid, track: e.track, participantId, trackId, kind: e.track.kind });
  }
}

/**
 * The encodings a camera track is sent in, each with the layer `publish_track`
 * announces for it (its rid and size): the largest layers of `CAMERA_LAYERS` that the
 * captured height allows. Fewer than two means one plain encoding.
 */
function encodingsOf(track) {
  const { width, height } = track.getSettings?.() ?? {};
  if (!width || !height) return [];
  const count = height >= 540 ? 3 : height >= 270 ? 2 : 0;
  return CAMERA_LAYERS.slice(CAMERA_LAYERS.length - count).map((encoding) => {
    const by = encoding.scaleResolutionDownBy;
    const layer = { rid: encoding.rid, width: Math.floor(width / by),
      height: Math.floor(height / by) };
    return { encoding, layer };
  });
}
