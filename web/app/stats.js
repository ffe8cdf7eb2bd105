// Reads the peer connection's statistics: what each received track delivered.

export class StatsSampler {
  /** @returns {Promise<{inbound: object[]}>} one entry per received stream */
  async sample(pc) {
    const report = await pc.getStats();
    const inbound = [];
    report.forEach((s) => {
      if (s.type !== 'inbound-rtp') return;
      inbound.push({
        mid: s.mid ?? null,
        trackIdentifier: s.trackIdentifier ?? null,
        kind: s.kind,
        framesDecoded: s.framesDecoded ?? 0,
        frameWidth: s.frameWidth ?? 0,
        packetsReceived: s.packetsReceived ?? 0,
        bytesReceived: s.bytesReceived ?? 0,
      });
    });
    return { inbound };
  }
}
