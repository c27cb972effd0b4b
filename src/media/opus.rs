//! Opus packet facts from the TOC byte (RFC 6716 §3.1), no decoding.

/// Samples at 48 kHz one Opus packet decodes to, from its TOC byte and frame
/// count; `None` for an empty or malformed packet.
pub fn packet_samples_48k(packet: &[u8]) -> Option<u32> {
    let toc = *packet.first()?;
    let config = toc >> 3;
    // Frame size per configuration (RFC 6716 table 2), in 48 kHz samples.
    let frame = match config {
        // SILK NB/MB/WB: 10, 20, 40, 60 ms
        0..=11 => [480, 960, 1920, 2880][usize::from(config % 4)],
        // Hybrid SWB/FB: 10, 20 ms
        12..=15 => [480, 960][usize::from(config % 2)],
        // CELT NB/WB/SWB/FB: 2.5, 5, 10, 20 ms
        _ => [120, 240, 480, 960][usize::from(config % 4)],
    };
    let frames = match toc & 0x03 {
        0 => 1,
        1 | 2 => 2,
        _ => u32::from(*packet.get(1)? & 0x3f),
    };
    let total = frame * frames;
    // A packet holds at most 120 ms.
    (frames > 0 && total <= 5760).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_from_toc() {
        // CELT FB 20 ms, one frame (what libopus and browsers send).
        assert_eq!(packet_samples_48k(&[0xfc, 0, 0]), Some(960));
        // SILK WB 60 ms.
        assert_eq!(packet_samples_48k(&[(11 << 3), 0]), Some(2880));
        // CELT 10 ms, two frames (code 1).
        assert_eq!(packet_samples_48k(&[(30 << 3) | 1, 0]), Some(960));
        // Code 3 with 3 frames of 20 ms.
        assert_eq!(packet_samples_48k(&[(31 << 3) | 3, 3]), Some(2880));
        // Code 3 over 120 ms, zero frames, empty.
        assert_eq!(packet_samples_48k(&[(31 << 3) | 3, 7]), None);
        assert_eq!(packet_samples_48k(&[(31 << 3) | 3, 0]), None);
        assert_eq!(packet_samples_48k(&[]), None);
    }
}
