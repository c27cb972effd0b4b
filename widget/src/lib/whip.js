// WHIP publishing shared by the publish page and the widget's screen share:
// codec preference and ICE gathering, then POST the offer with a Bearer
// (a stream key or a party member's publish grant).
import { errorFrom } from './api.js';

/** Puts `mime` (H264 with packetization-mode=1, or VP8) first on a video transceiver. */
export function preferCodec(transceiver, mime) {
  if (!window.RTCRtpSender || !RTCRtpSender.getCapabilities || !transceiver.setCodecPreferences) return;
  const caps = RTCRtpSender.getCapabilities('video');
  if (!caps) return;
  const want = caps.codecs.filter((c) => c.mimeType.toLowerCase() === `video/${mime.toLowerCase()}`
    && (mime !== 'H264' || /packetization-mode=1/.test(c.sdpFmtpLine || '')));
  const rest = caps.codecs.filter((c) => /rtx|red|ulpfec|flexfec/i.test(c.mimeType));
  if (want.length) transceiver.setCodecPreferences([...want, ...rest]);
}

/** Resolves when ICE gathering completes, or after `ms`. */
export function gathered(pc, ms) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    pc.addEventListener('icegatheringstatechange', () => {
      if (pc.iceGatheringState === 'complete') { clearTimeout(t); resolve(); }
    });
  });
}

/** Sends `media` over a new PeerConnection to `url`; returns {pc, resource}. Throws an ApiError. */
export async function whipPublish(url, bearer, media, { codec = 'VP8', kbps = 2500, hint = 'detail' } = {}) {
  const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
  try {
    const vt = media.getVideoTracks()[0];
    const at = media.getAudioTracks()[0];
    if (vt) {
      vt.contentHint = hint;
      const tr = pc.addTransceiver(vt, { direction: 'sendonly', streams: [media], sendEncodings: [{ maxBitrate: kbps * 1000 }] });
      preferCodec(tr, codec);
    }
    if (at) pc.addTransceiver(at, { direction: 'sendonly', streams: [media] });
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc, 2000);
    const resp = await fetch(url, {
      method: 'POST',
      headers: { 'Content-Type': 'application/sdp', Authorization: `Bearer ${bearer}` },
      body: pc.localDescription.sdp,
    });
    if (resp.status !== 201) throw await errorFrom(resp);
    const loc = resp.headers.get('Location');
    await pc.setRemoteDescription({ type: 'answer', sdp: await resp.text() });
    return { pc, resource: loc ? new URL(loc, location.href).href : null };
  } catch (e) {
    pc.close();
    throw e;
  }
}
