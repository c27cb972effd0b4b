//! A most-significant-bit-first reader for codec headers (VP9, AV1): every
//! read past the end gives `None`, so a truncated header is an answer, not a panic.

pub(crate) struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> BitReader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> BitReader<'a> {
        BitReader { data, pos: 0 }
    }

    /// `n` bits (at most 32) as an unsigned value.
    pub(crate) fn bits(&mut self, n: u32) -> Option<u32> {
        debug_assert!(n <= 32);
        let mut v = 0u32;
        for _ in 0..n {
            let byte = *self.data.get(self.pos / 8)?;
            v = (v << 1) | u32::from((byte >> (7 - self.pos % 8)) & 1);
            self.pos += 1;
        }
        Some(v)
    }

    pub(crate) fn flag(&mut self) -> Option<bool> {
        self.bits(1).map(|b| b == 1)
    }

    /// AV1's `uvlc()`: leading zeros, then that many bits.
    pub(crate) fn uvlc(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while !self.flag()? {
            zeros += 1;
            if zeros >= 32 {
                return None;
            }
        }
        let v = self.bits(zeros)?;
        Some(v.saturating_add((1u32 << zeros) - 1))
    }
}

/// An unsigned LEB128 value (AV1 OBU sizes) and the bytes it took; at most 8
/// bytes and values that fit in 32 bits, as the AV1 spec allows.
pub fn leb128(data: &[u8]) -> Option<(usize, usize)> {
    let mut v = 0u64;
    for (i, &b) in data.iter().take(8).enumerate() {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return usize::try_from(v)
                .ok()
                .filter(|_| v <= u64::from(u32::MAX))
                .map(|v| (v, i + 1));
        }
    }
    None
}

/// Appends `v` as LEB128 (the shortest form).
pub fn write_leb128(out: &mut Vec<u8>, mut v: usize) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_uvlc_and_leb128() {
        let mut r = BitReader::new(&[0b1010_0001, 0xff]);
        assert_eq!(r.bits(3), Some(0b101));
        assert_eq!(r.bits(0), Some(0));
        // uvlc: 0000 then 1, then 4 bits 1111 → 15 + 15 = 30.
        assert_eq!(r.uvlc(), Some(30));
        assert_eq!(r.bits(6), None, "past the end");
        assert_eq!(BitReader::new(&[0; 8]).uvlc(), None, "too many zeros");
        for v in [0usize, 1, 127, 128, 300, 16_383, 16_384, u32::MAX as usize] {
            let mut out = Vec::new();
            write_leb128(&mut out, v);
            assert_eq!(leb128(&out), Some((v, out.len())), "{v}");
        }
        assert_eq!(leb128(&[0x80, 0x80]), None, "unterminated");
        assert_eq!(leb128(&[0xff; 9]), None, "too long");
        assert_eq!(
            leb128(&[0x80, 0x80, 0x80, 0x80, 0x10]),
            None,
            "over 32 bits"
        );
    }
}
