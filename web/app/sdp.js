// Reading and adjusting session descriptions, where the browser's API falls short.

const EXTMAP = /^a=extmap:(\d+)(\/\w+)? (\S+)([^\r\n]*)$/gm;

/** The DTLS role an SDP's `a=setup` states: 'active', 'passive' or 'actpass'. */
export function setupOf(sdp) {
  return /^a=setup:(\w+)/m.exec(sdp)?.[1] ?? null;
}

/** The `a=msid` stream and track ids of media section `mid` of an SDP. */
export function msidOf(sdp, mid) {
  for (const section of sdp.split(/\r?\nm=/).slice(1)) {
    const lines = section.split(/\r?\n/);
    if (!lines.includes(`a=mid:${mid}`)) continue;
    const found = lines.map((l) => /^a=msid:(\S+) (\S+)/.exec(l)).find(Boolean);
    return found ? { streamId: found[1], trackId: found[2] } : null;
  }
  return null;
}

/**
 * Renumbers the RTP header extensions of an offer's new m-lines to agree with the
 * ids the bundle already uses. When the server offered first, its ids are the
 * bundle's, and Chrome gives a new m-line its own default ids even where the
 * server uses them for another extension; Chrome then refuses its own offer.
 * M-lines that the remote description already has are left alone.
 */
export function alignExtmapIds(offer, remote) {
  if (!remote) return offer;
  const negotiated = new Set([...remote.matchAll(/^a=mid:(\S+)/gm)].map((m) => m[1]));
  const ids = new Map();
  for (const [, id, , uri] of remote.matchAll(EXTMAP)) {
    if (!ids.has(uri)) ids.set(uri, Number(id));
  }
  const taken = new Set(ids.values());

  const [head, ...sections] = offer.split(/\r\n(?=m=)/);
  const aligned = sections.map((section) => {
    const mid = /^a=mid:(\S+)/m.exec(section)?.[1];
    if (negotiated.has(mid)) return section;
    return section.replace(EXTMAP, (line, id, direction = '', uri, rest) => {
      if (!ids.has(uri)) {
        const own = Number(id);
        const chosen = taken.has(own) ? freeId(taken) : own;
        ids.set(uri, chosen);
        taken.add(chosen);
      }
      return `a=extmap:${ids.get(uri)}${direction} ${uri}${rest}`;
    });
  });
  return [head, ...aligned].join('\r\n');
}

/** The lowest id not taken: one-byte header ids first, then two-byte ones. */
function freeId(taken) {
  for (let id = 1; id <= 255; id += 1) {
    if (id !== 15 && !taken.has(id)) return id;
  }
  throw new Error('no free RTP header extension id');
}
