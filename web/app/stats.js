// Reads the peer connection's statistics: what each received track delivered, and
// how loud each audio track was since the previous sample.

export class StatsSampler {
  constructor() {
    /** Audio energy counters of the previous sample, by stats id. */
    this.energy = new Map();
  }

  /**
   * @returns {Promise<{inbound: object[], localLevel: number}>} one entry per
   *   received stream, and the microphone's level (0 to 1)
   */
  async sample(pc) {
    const report = await pc.getStats();
    const inbound = [];
    let localLevel = 0;
    const seen = new Set();
    report.forEach((s) => {
      if (s.type === 'inbound-rtp') {
        seen.add(s.id);
        inbound.push({
          mid: s.mid ?? null,
          trackIdentifier: s.trackIdentifier ?? null,
          kind: s.kind,
          framesDecoded: s.framesDecoded ?? 0,
          frameWidth: s.frameWidth ?? 0,
          packetsReceived: s.packetsReceived ?? 0,
          bytesReceived: s.bytesReceived ?? 0,
          level: s.kind === 'audio' ? this.level(s) : 0,
        });
      } else if (s.type === 'media-source' && s.kind === 'audio') {
        seen.add(s.id);
        localLevel = Math.max(localLevel, this.level(s));
      }
    });
    for (const id of this.energy.keys()) {
      if (!seen.has(id)) this.energy.delete(id);
    }
    return { inbound, localLevel };
  }

  /** Root-mean-square level over the last interval, from the cumulative counters. */
  level(s) {
    if (s.totalAudioEnergy === undefined || s.totalSamplesDuration === undefined) {
      return s.audioLevel ?? 0;
    }
    const before = this.energy.get(s.id);
    this.energy.set(s.id, { energy: s.totalAudioEnergy, duration: s.totalSamplesDuration });
    if (!before) return s.audioLevel ?? 0;
    const duration = s.totalSamplesDuration - before.duration;
    if (duration <= 0) return 0;
    return Math.sqrt(Math.max(0, s.totalAudioEnergy - before.energy) / duration);
  }
}

/** Picks who is speaking: the loudest level above the threshold, held for a while. */
export class SpeakerDetector {
  constructor({ threshold = 0.02, holdMs = 1500 } = {}) {
    this.threshold = threshold;
    this.holdMs = holdMs;
    this.current = null;
    this.since = 0;
  }

  /**
   * @param {Map<string, number>} levels level by participant id
   * @param {number} now milliseconds
   * @returns {string|null} the active speaker's participant id
   */
  update(levels, now) {
    let loudest = null;
    let best = this.threshold;
    for (const [id, level] of levels) {
      if (level > best) {
        best = level;
        loudest = id;
      }
    }
    if (loudest) {
      this.current = loudest;
      this.since = now;
    } else if (this.current && now - this.since > this.holdMs) {
      this.current = null;
    }
    return this.current;
  }
}
