// The local devices: camera and microphone capture, device switching, screen capture.
//
// Capture problems never stop a join: the page joins with whatever it could get
// and says in plain words what is missing and why.

/** 720p, which the page sends in three simulcast layers (see `CAMERA_LAYERS`). */
const VIDEO = {
  width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 24, max: 30 },
};
const AUDIO = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };

export class LocalMedia {
  constructor() {
    /** Camera and microphone tracks, published under one stream id. */
    this.stream = new MediaStream();
    this.audio = null;
    this.video = null;
  }

  /**
   * Opens camera and microphone.
   * @returns {Promise<string|null>} what went wrong, for the person, or null
   */
  async start() {
    if (!navigator.mediaDevices?.getUserMedia) {
      return 'This browser cannot use a camera or microphone here (the page needs HTTPS). ' +
        'You joined without them.';
    }
    try {
      this.adopt(await navigator.mediaDevices.getUserMedia({ audio: AUDIO, video: VIDEO }));
      return null;
    } catch (e) {
      if (isDenied(e)) return deniedMessage();
    }
    // One of the two may be missing or busy: take whichever still works.
    const missing = [];
    for (const kind of ['audio', 'video']) {
      try {
        const constraints = kind === 'audio' ? { audio: AUDIO } : { video: VIDEO };
        this.adopt(await navigator.mediaDevices.getUserMedia(constraints));
      } catch (e) {
        if (isDenied(e)) return deniedMessage();
        missing.push({ kind, error: e });
      }
    }
    if (missing.length === 0) return null;
    const what = missing.length === 2 ? 'camera or microphone'
      : missing[0].kind === 'audio' ? 'microphone' : 'camera';
    const busy = missing.some((m) => m.error.name === 'NotReadableError');
    return busy
      ? `Your ${what} is in use by another application; you joined without it.`
      : `No ${what} was found; you joined without it.`;
  }

  adopt(stream) {
    for (const track of stream.getTracks()) {
      this.stream.addTrack(track);
      this[track.kind] = track;
    }
  }

  /** Cameras and microphones, with the ids of the ones in use. */
  async devices() {
    const all = await navigator.mediaDevices.enumerateDevices();
    return {
      cameras: all.filter((d) => d.kind === 'videoinput'),
      mics: all.filter((d) => d.kind === 'audioinput'),
      camera: this.video?.getSettings().deviceId ?? null,
      mic: this.audio?.getSettings().deviceId ?? null,
    };
  }

  /**
   * Replaces the track of `kind` with one from device `deviceId`.
   * @returns {Promise<MediaStreamTrack>} the new track, enabled like the old one
   */
  async switchDevice(kind, deviceId) {
    const base = kind === 'audio' ? AUDIO : VIDEO;
    const stream = await navigator.mediaDevices.getUserMedia({
      [kind]: { ...base, deviceId: { exact: deviceId } },
    });
    const track = stream.getTracks()[0];
    const old = this[kind];
    if (old) {
      track.enabled = old.enabled;
      this.stream.removeTrack(old);
      old.stop();
    }
    this.stream.addTrack(track);
    this[kind] = track;
    return track;
  }

  /** Asks for a screen, window or tab; null when the person cancels. */
  async captureScreen() {
    try {
      const stream = await navigator.mediaDevices.getDisplayMedia({
        video: { frameRate: { ideal: 15 } },
        audio: false,
      });
      return { stream, track: stream.getVideoTracks()[0] };
    } catch (e) {
      if (isDenied(e)) return null;
      throw e;
    }
  }

  stop() {
    for (const track of this.stream.getTracks()) track.stop();
    this.stream = new MediaStream();
    this.audio = null;
    this.video = null;
  }
}

function isDenied(e) {
  return e.name === 'NotAllowedError' || e.name === 'SecurityError';
}

function deniedMessage() {
  return 'Camera and microphone access was denied, so you joined without them. ' +
    "Allow access in the browser's site settings, then leave and rejoin.";
}
