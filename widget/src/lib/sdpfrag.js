// application/trickle-ice-sdpfrag bodies (RFC 8840) for a WHEP ICE restart
// (RFC 9725 §4.3.2): the fragment the player PATCHes with its new ICE
// credentials, the server's answer fragment, and the remote description with
// the server's new credentials and candidates put in. Pure string functions.

export const SDPFRAG = 'application/trickle-ice-sdpfrag';

/** The first `a=NAME:value` of an SDP text (with BUNDLE every section has the same). */
function attr(sdp, name) {
  const m = new RegExp(`^a=${name}:(.*)$`, 'm').exec(sdp);
  return m ? m[1].trim() : null;
}

function lines(sdp) {
  return sdp.split(/\r?\n/).filter((l) => l !== '');
}

/** The restart fragment of an offer made with iceRestart: its new ice-ufrag and
 *  ice-pwd in its first media section (max-bundle: one transport for all), with
 *  the candidates gathered so far. roomcast is ICE-lite and learns the client's
 *  address from its checks, so no candidate is needed. */
export function restartFragment(offerSdp) {
  const out = ['a=ice-options:trickle'];
  let section = -1;
  for (const l of lines(offerSdp)) {
    if (l.startsWith('m=')) {
      section++;
      if (section > 0) break;
      // RFC 8840 §9: the m= line with port 9 and a placeholder format.
      const [media, , proto] = l.slice(2).split(' ');
      out.push(`m=${media} 9 ${proto} 0`);
    } else if (section === 0 && /^a=(mid|ice-ufrag|ice-pwd|candidate|end-of-candidates)\b/.test(l)) {
      out.push(l);
    }
  }
  // Chromium puts the credentials in each media section; a session-level pair counts too.
  if (!out.some((l) => l.startsWith('a=ice-ufrag:'))) {
    const [ufrag, pwd] = [attr(offerSdp, 'ice-ufrag'), attr(offerSdp, 'ice-pwd')];
    if (ufrag && pwd) out.push(`a=ice-ufrag:${ufrag}`, `a=ice-pwd:${pwd}`);
  }
  return `${out.join('\r\n')}\r\n`;
}

/** What a fragment says: {ufrag, pwd, candidates: ['candidate:…'], mid}. */
export function parseFragment(text) {
  return {
    ufrag: attr(text, 'ice-ufrag'),
    pwd: attr(text, 'ice-pwd'),
    candidates: lines(text).filter((l) => l.startsWith('a=candidate:')).map((l) => l.slice(2)),
    mid: attr(text, 'mid'),
  };
}

/** `sdp` (the current answer) with the credentials of `frag` in every section and
 *  its candidates instead of the old ones. Everything else stays, DTLS
 *  fingerprint and role included: the DTLS session and the m-lines go on. */
export function withIceCredentials(sdp, frag) {
  const oldUfrag = attr(sdp, 'ice-ufrag');
  const out = [];
  let inMedia = false;
  const endSection = () => {
    if (!inMedia) return;
    for (const c of frag.candidates) out.push(`a=${c}`);
    if (frag.candidates.length) out.push('a=end-of-candidates');
  };
  for (const l of lines(sdp)) {
    if (l.startsWith('m=')) {
      endSection();
      inMedia = true;
      out.push(l);
    } else if (l.startsWith('a=ice-ufrag:')) {
      out.push(`a=ice-ufrag:${frag.ufrag}`);
    } else if (l.startsWith('a=ice-pwd:')) {
      out.push(`a=ice-pwd:${frag.pwd}`);
    } else if (frag.candidates.length && (l.startsWith('a=candidate:') || l === 'a=end-of-candidates')) {
      // Replaced by the fragment's at the end of the section.
    } else if (l.startsWith('a=candidate:') && oldUfrag) {
      // No candidates in the fragment: the old addresses, without the old ufrag's name.
      out.push(l.replace(` ufrag ${oldUfrag}`, ''));
    } else {
      out.push(l);
    }
  }
  endSection();
  return `${out.join('\r\n')}\r\n`;
}
