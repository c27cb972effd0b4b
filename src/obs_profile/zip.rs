//! A minimal ZIP writer: stored (uncompressed) entries, enough for an OBS
//! profile of a few kilobytes. Written here rather than adding a crate: the
//! format needed is a header per file, a CRC-32 and a central directory.

/// CRC-32 (IEEE 802.3, reflected), as ZIP requires.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

/// Builds a ZIP archive in memory from `(path, contents)` pairs. Paths use
/// `/` and are stored as UTF-8 (general-purpose flag bit 11).
pub fn build(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    // 1 January 2026, 00:00: a fixed time keeps the archive reproducible.
    let (dos_time, dos_date): (u16, u16) = (0, ((2026 - 1980) << 9) | (1 << 5) | 1);
    for (path, data) in files {
        let offset = out.len() as u32;
        let crc = crc32(data);
        let size = data.len() as u32;
        let name = path.as_bytes();
        let common = |v: &mut Vec<u8>| {
            v.extend_from_slice(&20u16.to_le_bytes()); // version needed: 2.0
            v.extend_from_slice(&(1u16 << 11).to_le_bytes()); // UTF-8 names
            v.extend_from_slice(&0u16.to_le_bytes()); // stored
            v.extend_from_slice(&dos_time.to_le_bytes());
            v.extend_from_slice(&dos_date.to_le_bytes());
            v.extend_from_slice(&crc.to_le_bytes());
            v.extend_from_slice(&size.to_le_bytes());
            v.extend_from_slice(&size.to_le_bytes());
            v.extend_from_slice(&(name.len() as u16).to_le_bytes());
            v.extend_from_slice(&0u16.to_le_bytes()); // extra length
        };
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        common(&mut out);
        out.extend_from_slice(name);
        out.extend_from_slice(data);

        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&(0x0300u16 | 20).to_le_bytes()); // made by: Unix, 2.0
        common(&mut central);
        central.extend_from_slice(&0u16.to_le_bytes()); // comment length
        central.extend_from_slice(&0u16.to_le_bytes()); // disk number
        central.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
        central.extend_from_slice(&((0o100644u32) << 16).to_le_bytes()); // rw-r--r--
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name);
    }
    let cd_offset = out.len() as u32;
    let cd_size = central.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes()); // this disk
    out.extend_from_slice(&0u16.to_le_bytes()); // disk with the directory
    out.extend_from_slice(&(files.len() as u16).to_le_bytes());
    out.extend_from_slice(&(files.len() as u16).to_le_bytes());
    out.extend_from_slice(&cd_size.to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes()); // comment length
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_of_the_check_string() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    /// Reads the archive back through its central directory.
    #[test]
    fn entries_read_back() {
        let files = vec![
            ("a/one.txt".to_string(), b"hello".to_vec()),
            ("a/two.json".to_string(), b"{}".to_vec()),
        ];
        let z = build(&files);
        let u16_at = |i: usize| u16::from_le_bytes([z[i], z[i + 1]]) as usize;
        let u32_at = |i: usize| u32::from_le_bytes([z[i], z[i + 1], z[i + 2], z[i + 3]]) as usize;
        let eocd = z.len() - 22;
        assert_eq!(u32_at(eocd), 0x0605_4b50);
        assert_eq!(u16_at(eocd + 10), 2);
        let mut p = u32_at(eocd + 16);
        for (name, data) in &files {
            assert_eq!(u32_at(p), 0x0201_4b50);
            let n = u16_at(p + 28);
            assert_eq!(&z[p + 46..p + 46 + n], name.as_bytes());
            let local = u32_at(p + 42);
            assert_eq!(u32_at(local), 0x0403_4b50);
            let start = local + 30 + u16_at(local + 26);
            assert_eq!(&z[start..start + data.len()], &data[..]);
            assert_eq!(u32_at(p + 16) as u32, crc32(data));
            p += 46 + n;
        }
    }
}
