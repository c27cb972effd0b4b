// Whether a PeerConnection's path still carries anything, from its own
// counters. Browsers report 'disconnected' only after seconds of unanswered
// consent checks (Chromium: about 6 s after the path goes), while the media
// stops at once: a player that watches its packet counter can restart ICE
// seconds earlier, and tell a restart that works from one that does not.

/** What arrived so far: RTP packets of every inbound stream (only grows),
 *  the STUN responses on the selected candidate pair (`null` when this
 *  browser does not report them; another pair after a restart has its own
 *  count, so a change, not a rise, is what counts), and which pair is
 *  selected: after an ICE restart a new pair is selected once a check on it
 *  was answered, and its count may well equal the old one's (Firefox: 1 and
 *  1, and its next consent answer comes ~5 s later). */
export async function pathCounters(pc) {
  const stats = await pc.getStats();
  let packets = 0;
  let responses = null;
  const pairs = [];
  stats.forEach((s) => {
    if (s.type === 'inbound-rtp') packets += s.packetsReceived || 0;
    // The standard way to the selected pair (Chromium, Safari) …
    if (s.type === 'transport' && s.selectedCandidatePairId) pairs.push(stats.get(s.selectedCandidatePairId));
    // … and Firefox's (no transport stats; a non-standard `selected`).
    if (s.type === 'candidate-pair' && s.selected === true) pairs.push(s);
  });
  const selected = [...new Set(pairs)].filter(Boolean);
  for (const pair of selected) {
    if (typeof pair.responsesReceived === 'number') responses = (responses ?? 0) + pair.responsesReceived;
  }
  const pair = selected.map((p) => p.id).sort().join(' ') || null;
  return { packets, responses, pair };
}

/** The watch of one PeerConnection: fed a sample of pathCounters every tick,
 *  it says whether the path has gone quiet and whether it has answered since
 *  a given moment. Pure: the clock is passed in. */
export class PathWatch {
  /** @param {number} quietMs no packet this long (after packets flowed) is quiet */
  constructor(quietMs) {
    this.quietMs = quietMs;
    this.packets = null;
    this.responses = null;
    this.pair = null;
    this.packetAt = 0; // when the packet counter last moved
    this.answerAt = 0; // when the path last answered (a counter moved, another pair)
    this.armed = false; // packets flowed since the last quiet spell was reported
    this.reportsResponses = false;
    this.busy = false; // a getStats() for this watch is under way (the player's)
  }

  /** A new sample at `now` (ms). */
  sample({ packets, responses, pair }, now) {
    if (this.packets !== null && packets !== this.packets) {
      this.packetAt = now;
      this.answerAt = now;
      this.armed = true;
    }
    if (responses !== null) {
      if (this.responses !== null && responses !== this.responses) this.answerAt = now;
      this.reportsResponses = true;
    }
    // Another pair selected: a check on it was answered.
    if (pair && this.pair && pair !== this.pair) this.answerAt = now;
    if (this.packets === null) this.packetAt = now;
    this.packets = packets;
    this.responses = responses;
    if (pair) this.pair = pair;
  }

  /** Packets flowed, then none for quietMs: reported once per quiet spell (a
   *  publisher who pauses costs one needless restart, not one per tick; the
   *  server sends nothing while the stream is still, so no new spell starts
   *  before the publisher goes on). */
  takeQuiet(now) {
    if (!this.armed || now - this.packetAt < this.quietMs) return false;
    this.armed = false;
    return true;
  }

  /** Whether a packet, a STUN response or a newly selected pair came after
   *  `since` (ms). */
  answeredSince(since) {
    return this.answerAt > since;
  }
}
