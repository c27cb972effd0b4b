//! RTMP chunk stream: incoming chunks (formats 0–3, extended timestamps,
//! interleaved chunk streams) are reassembled into messages; outgoing messages
//! are cut into chunks. Payload bytes are copied once, from the read buffer
//! into the message; headers wait in an 18-byte staging array. Every count a
//! client controls is capped and all arithmetic is checked or saturating.

use bytes::Bytes;

/// The protocol's own bound on Set Chunk Size, 1..=0xFFFFFF.
pub const MAX_CHUNK_SIZE: u32 = 0xFF_FFFF;
/// Chunk size before the peer sets one.
pub const DEFAULT_CHUNK_SIZE: u32 = 128;
/// Longest chunk header: 3-byte basic header, 11-byte type-0 header, 4-byte
/// extended timestamp.
const MAX_HEADER: usize = 18;
const EXTENDED: u32 = 0xFF_FFFF;

pub const TYPE_SET_CHUNK_SIZE: u8 = 1;
pub const TYPE_ABORT: u8 = 2;
pub const TYPE_ACK: u8 = 3;
pub const TYPE_USER_CONTROL: u8 = 4;
pub const TYPE_WINDOW_ACK_SIZE: u8 = 5;
pub const TYPE_SET_PEER_BANDWIDTH: u8 = 6;
pub const TYPE_AUDIO: u8 = 8;
pub const TYPE_VIDEO: u8 = 9;
pub const TYPE_AMF3_DATA: u8 = 15;
pub const TYPE_AMF3_COMMAND: u8 = 17;
pub const TYPE_AMF0_DATA: u8 = 18;
pub const TYPE_AMF0_COMMAND: u8 = 20;

/// What one connection may make the reader hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest audio/video message a client may declare.
    pub max_message_bytes: u32,
    /// Longest message of any other type (commands, metadata, control).
    pub max_other_bytes: u32,
    /// Distinct chunk stream ids per connection.
    pub max_chunk_streams: usize,
    /// Bytes of unfinished messages held across all chunk streams at once.
    pub max_buffered_bytes: usize,
}

impl Limits {
    pub fn new(max_message_bytes: u32) -> Self {
        Limits {
            max_message_bytes,
            max_other_bytes: 256 * 1024,
            max_chunk_streams: 64,
            // One full-size video message plus room for interleaved audio.
            max_buffered_bytes: (max_message_bytes as usize).saturating_add(1 << 20),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("Set Chunk Size {0} is outside 1..={MAX_CHUNK_SIZE}")]
    BadChunkSize(u32),
    #[error("more than {0} chunk streams")]
    TooManyChunkStreams(usize),
    #[error("message of type {type_id} declares {length} bytes, over the limit of {max}")]
    MessageTooLarge { type_id: u8, length: u32, max: u32 },
    #[error("chunk stream {csid} starts with a type-{fmt} header (no previous header)")]
    NoPreviousHeader { csid: u32, fmt: u8 },
    #[error("chunk stream {csid}: a new message header before the previous message ended")]
    Interrupted { csid: u32 },
    #[error("more than {0} bytes of unfinished messages")]
    BufferedTooMuch(usize),
}

impl ChunkError {
    /// A short name for log rate limiting.
    pub fn kind(&self) -> &'static str {
        match self {
            ChunkError::BadChunkSize(_) => "bad chunk size",
            ChunkError::TooManyChunkStreams(_) => "too many chunk streams",
            ChunkError::MessageTooLarge { .. } => "message too large",
            ChunkError::NoPreviousHeader { .. } => "no previous chunk header",
            ChunkError::Interrupted { .. } => "interrupted message",
            ChunkError::BufferedTooMuch(_) => "too much buffered",
        }
    }
}

/// One reassembled message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub type_id: u8,
    pub stream_id: u32,
    pub timestamp: u32,
    pub payload: Bytes,
}

#[derive(Debug, Default)]
struct ChunkStream {
    csid: u32,
    timestamp: u32,
    delta: u32,
    length: u32,
    type_id: u8,
    stream_id: u32,
    /// The last type 0–2 header used an extended timestamp, so type-3 chunks
    /// carry one too.
    extended: bool,
    /// A message is being assembled in `buf`.
    in_progress: bool,
    buf: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Header,
    /// `left` payload bytes of the current chunk go to `streams[idx]`.
    Payload {
        idx: usize,
        left: u32,
    },
}

pub struct ChunkReader {
    limits: Limits,
    chunk_size: u32,
    streams: Vec<ChunkStream>,
    hdr: [u8; MAX_HEADER],
    hdr_len: usize,
    state: State,
    buffered: usize,
}

fn u24(b: &[u8]) -> u32 {
    u32::from_be_bytes([0, b[0], b[1], b[2]])
}

fn u32be(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

impl ChunkReader {
    pub fn new(limits: Limits) -> Self {
        ChunkReader {
            limits,
            chunk_size: DEFAULT_CHUNK_SIZE,
            streams: Vec::new(),
            hdr: [0; MAX_HEADER],
            hdr_len: 0,
            state: State::Header,
            buffered: 0,
        }
    }

    /// Bytes of unfinished messages held across all chunk streams.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// Set Chunk Size from the peer, for the chunks after it.
    pub fn set_chunk_size(&mut self, size: u32) -> Result<(), ChunkError> {
        if !(1..=MAX_CHUNK_SIZE).contains(&size) {
            return Err(ChunkError::BadChunkSize(size));
        }
        self.chunk_size = size;
        Ok(())
    }

    /// Abort: drop the unfinished message of chunk stream `csid`.
    pub fn abort(&mut self, csid: u32) {
        if let Some(s) = self.streams.iter_mut().find(|s| s.csid == csid) {
            self.buffered = self.buffered.saturating_sub(s.buf.len());
            s.buf = Vec::new();
            s.in_progress = false;
            if let State::Payload { idx, .. } = self.state
                && self.streams[idx].csid == csid
            {
                self.state = State::Header;
            }
        }
    }

    /// Reads from the front of `data` (advancing it) until one message is
    /// complete or `data` is used up. Call again while it returns a message:
    /// control messages such as Set Chunk Size must be applied in between.
    pub fn next(&mut self, data: &mut &[u8]) -> Result<Option<Message>, ChunkError> {
        loop {
            match self.state {
                State::Header => {
                    let need = self.header_len();
                    if self.hdr_len < need {
                        if data.is_empty() {
                            return Ok(None);
                        }
                        let n = (need - self.hdr_len).min(data.len());
                        self.hdr[self.hdr_len..self.hdr_len + n].copy_from_slice(&data[..n]);
                        self.hdr_len += n;
                        *data = &data[n..];
                        continue;
                    }
                    self.hdr_len = 0;
                    if let Some(m) = self.on_header()? {
                        return Ok(Some(m));
                    }
                }
                State::Payload { idx, left } => {
                    if data.is_empty() {
                        return Ok(None);
                    }
                    let n = (left as usize).min(data.len());
                    self.buffered = self.buffered.saturating_add(n);
                    if self.buffered > self.limits.max_buffered_bytes {
                        return Err(ChunkError::BufferedTooMuch(self.limits.max_buffered_bytes));
                    }
                    let s = &mut self.streams[idx];
                    let declared = s.length as usize;
                    let len = s.buf.len();
                    if s.buf.capacity() - len < n {
                        // Grow with what arrives, never past the declared length.
                        let want = (len.saturating_mul(2)).min(declared).max(len + n);
                        s.buf.reserve_exact(want - len);
                    }
                    s.buf.extend_from_slice(&data[..n]);
                    *data = &data[n..];
                    // n <= left, which fits u32.
                    let left = left - n as u32;
                    self.state = State::Payload { idx, left };
                    if left == 0 {
                        self.state = State::Header;
                        if self.streams[idx].buf.len() >= declared {
                            return Ok(Some(self.finish(idx)));
                        }
                    }
                }
            }
        }
    }

    /// Header bytes needed, as far as the staged bytes tell.
    fn header_len(&self) -> usize {
        if self.hdr_len < 1 {
            return 1;
        }
        let fmt = self.hdr[0] >> 6;
        let basic = match self.hdr[0] & 0x3f {
            0 => 2,
            1 => 3,
            _ => 1,
        };
        if self.hdr_len < basic {
            return basic;
        }
        let base = basic + [11, 7, 3, 0][usize::from(fmt)];
        if self.hdr_len < base {
            return base;
        }
        let extended = if fmt < 3 {
            u24(&self.hdr[basic..]) == EXTENDED
        } else {
            let csid = self.csid();
            self.streams
                .iter()
                .find(|s| s.csid == csid)
                .is_some_and(|s| s.extended)
        };
        base + if extended { 4 } else { 0 }
    }

    fn csid(&self) -> u32 {
        match self.hdr[0] & 0x3f {
            0 => 64 + u32::from(self.hdr[1]),
            1 => 64 + u32::from(self.hdr[1]) + 256 * u32::from(self.hdr[2]),
            n => u32::from(n),
        }
    }

    fn on_header(&mut self) -> Result<Option<Message>, ChunkError> {
        let fmt = self.hdr[0] >> 6;
        let csid = self.csid();
        let basic = match self.hdr[0] & 0x3f {
            0 => 2,
            1 => 3,
            _ => 1,
        };
        let h = &self.hdr[basic..];
        let idx = match self.streams.iter().position(|s| s.csid == csid) {
            Some(i) => i,
            None if fmt != 0 => return Err(ChunkError::NoPreviousHeader { csid, fmt }),
            None if self.streams.len() >= self.limits.max_chunk_streams => {
                return Err(ChunkError::TooManyChunkStreams(
                    self.limits.max_chunk_streams,
                ));
            }
            None => {
                self.streams.push(ChunkStream {
                    csid,
                    ..ChunkStream::default()
                });
                self.streams.len() - 1
            }
        };
        let s = &mut self.streams[idx];
        if fmt < 3 && s.in_progress {
            return Err(ChunkError::Interrupted { csid });
        }
        match fmt {
            0..=2 => {
                let field = u24(h);
                s.extended = field == EXTENDED;
                let ext_at = [11, 7, 3][usize::from(fmt)];
                let ts = if s.extended {
                    u32be(&h[ext_at..])
                } else {
                    field
                };
                if fmt == 0 {
                    s.timestamp = ts;
                    // A type-3 chunk after a type-0 one repeats its
                    // timestamp as the delta (RTMP spec 5.3.1.2.4; ffmpeg
                    // writes and reads it so).
                    s.delta = ts;
                    s.stream_id = u32::from_le_bytes([h[7], h[8], h[9], h[10]]);
                } else {
                    s.delta = ts;
                    s.timestamp = s.timestamp.wrapping_add(ts);
                }
                if fmt < 2 {
                    s.length = u24(&h[3..]);
                    s.type_id = h[6];
                }
            }
            _ => {
                if !s.in_progress {
                    // A type-3 chunk starting a message repeats the last delta.
                    s.timestamp = s.timestamp.wrapping_add(s.delta);
                }
            }
        }
        if !s.in_progress {
            let max = match s.type_id {
                TYPE_AUDIO | TYPE_VIDEO => self.limits.max_message_bytes,
                _ => self.limits.max_other_bytes,
            };
            if s.length > max {
                return Err(ChunkError::MessageTooLarge {
                    type_id: s.type_id,
                    length: s.length,
                    max,
                });
            }
            s.in_progress = true;
        }
        let remaining = s.length.saturating_sub(s.buf.len() as u32);
        if remaining == 0 {
            return Ok(Some(self.finish(idx)));
        }
        self.state = State::Payload {
            idx,
            left: remaining.min(self.chunk_size),
        };
        Ok(None)
    }

    fn finish(&mut self, idx: usize) -> Message {
        let s = &mut self.streams[idx];
        s.in_progress = false;
        let buf = std::mem::take(&mut s.buf);
        self.buffered = self.buffered.saturating_sub(buf.len());
        Message {
            type_id: s.type_id,
            stream_id: s.stream_id,
            timestamp: s.timestamp,
            payload: Bytes::from(buf),
        }
    }
}

/// Appends `payload` as one message in chunks of `chunk_size` on chunk stream
/// `csid` (2..=63): a type-0 header, then type-3 continuation headers.
pub fn write_message(
    out: &mut Vec<u8>,
    csid: u8,
    type_id: u8,
    stream_id: u32,
    timestamp: u32,
    payload: &[u8],
    chunk_size: u32,
) {
    let csid = csid.clamp(2, 63);
    let len = payload.len().min(EXTENDED as usize);
    let payload = &payload[..len];
    out.push(csid);
    let ts = timestamp.min(EXTENDED);
    out.extend_from_slice(&ts.to_be_bytes()[1..]);
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    out.push(type_id);
    out.extend_from_slice(&stream_id.to_le_bytes());
    if ts == EXTENDED {
        out.extend_from_slice(&timestamp.to_be_bytes());
    }
    let size = (chunk_size.max(1) as usize).min(len.max(1));
    for (i, chunk) in payload.chunks(size).enumerate() {
        if i > 0 {
            out.push(0xc0 | csid);
            if ts == EXTENDED {
                out.extend_from_slice(&timestamp.to_be_bytes());
            }
        }
        out.extend_from_slice(chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader() -> ChunkReader {
        ChunkReader::new(Limits::new(8 << 20))
    }

    fn read_all(r: &mut ChunkReader, mut data: &[u8]) -> Result<Vec<Message>, ChunkError> {
        let mut out = Vec::new();
        while let Some(m) = r.next(&mut data)? {
            out.push(m);
        }
        assert!(data.is_empty());
        Ok(out)
    }

    #[test]
    fn messages_round_trip_through_any_split() {
        let payload: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let mut wire = Vec::new();
        write_message(&mut wire, 6, TYPE_VIDEO, 1, 40, &payload, 128);
        write_message(&mut wire, 4, TYPE_AUDIO, 1, 0x0100_0000, b"aac", 128);
        for split in [1, 2, 7, 128, wire.len()] {
            let mut r = reader();
            let mut got = Vec::new();
            for piece in wire.chunks(split) {
                got.extend(read_all(&mut r, piece).unwrap());
            }
            assert_eq!(got.len(), 2, "split {split}");
            assert_eq!(got[0].payload, payload);
            assert_eq!(
                (got[0].type_id, got[0].stream_id, got[0].timestamp),
                (9, 1, 40)
            );
            assert_eq!(got[1].payload, &b"aac"[..]);
            assert_eq!(got[1].timestamp, 0x0100_0000);
        }
    }

    #[test]
    fn interleaved_chunk_streams_and_header_types() {
        let mut r = reader();
        let mut wire = Vec::new();
        // Video (csid 6) 200 bytes in two chunks, audio (csid 4) in between.
        wire.extend_from_slice(&[6, 0, 0, 10, 0, 0, 200, 9, 1, 0, 0, 0]);
        wire.extend_from_slice(&[1; 128]);
        wire.extend_from_slice(&[4, 0, 0, 5, 0, 0, 2, 8, 1, 0, 0, 0, 0xaa, 0xbb]);
        wire.push(0xc6);
        wire.extend_from_slice(&[2; 72]);
        // Type 1 on csid 4: delta 20, new length 1.
        wire.extend_from_slice(&[0x44, 0, 0, 20, 0, 0, 1, 8, 0xcc]);
        // Type 2: delta 30; type 3: same delta again.
        wire.extend_from_slice(&[0x84, 0, 0, 30, 0xdd]);
        wire.extend_from_slice(&[0xc4, 0xee]);
        let got = read_all(&mut r, &wire).unwrap();
        let summary: Vec<_> = got
            .iter()
            .map(|m| (m.type_id, m.timestamp, m.payload.len()))
            .collect();
        assert_eq!(
            summary,
            vec![(8, 5, 2), (9, 10, 200), (8, 25, 1), (8, 55, 1), (8, 85, 1)]
        );
        assert_eq!(&got[1].payload[..128], &[1; 128][..]);
        assert_eq!(&got[1].payload[128..], &[2; 72][..]);
    }

    #[test]
    fn type_3_after_type_0_repeats_the_timestamp_as_delta() {
        let mut r = reader();
        let got = read_all(
            &mut r,
            &[
                4, 0, 0, 40, 0, 0, 1, 8, 1, 0, 0, 0, 0xaa, 0xc4, 0xbb, 0xc4, 0xcc,
            ],
        )
        .unwrap();
        let ts: Vec<u32> = got.iter().map(|m| m.timestamp).collect();
        assert_eq!(ts, vec![40, 80, 120]);
    }

    #[test]
    fn extended_timestamps_in_continuations() {
        let mut r = reader();
        let payload = vec![7u8; 300];
        let mut wire = Vec::new();
        write_message(&mut wire, 5, TYPE_VIDEO, 1, 0xFFFF_FFF0, &payload, 128);
        // Next message on the same csid, type 3 starting a message (delta 0).
        let got = read_all(&mut r, &wire).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].timestamp, 0xFFFF_FFF0);
        assert_eq!(got[0].payload, payload);
    }

    #[test]
    fn chunk_size_bounds() {
        let mut r = reader();
        assert_eq!(r.set_chunk_size(0), Err(ChunkError::BadChunkSize(0)));
        assert_eq!(
            r.set_chunk_size(0x7fff_ffff),
            Err(ChunkError::BadChunkSize(0x7fff_ffff))
        );
        assert!(r.set_chunk_size(MAX_CHUNK_SIZE).is_ok());
        // A maximum chunk size still obeys the message cap.
        let wire = [6, 0, 0, 0, 0x80, 0, 1, 9, 1, 0, 0, 0];
        assert!(matches!(
            read_all(&mut r, &wire),
            Err(ChunkError::MessageTooLarge {
                length: 0x80_0001,
                ..
            })
        ));
        // Chunk size 1 works, byte by byte.
        let mut r = reader();
        r.set_chunk_size(1).unwrap();
        let mut wire = Vec::new();
        write_message(&mut wire, 3, TYPE_AMF0_COMMAND, 0, 0, b"hello", 1);
        let got = read_all(&mut r, &wire).unwrap();
        assert_eq!(got[0].payload, &b"hello"[..]);
    }

    #[test]
    fn declared_lengths_over_the_cap_are_refused_before_buffering() {
        let mut r = ChunkReader::new(Limits::new(1 << 20));
        let wire = [6, 0, 0, 0, 0xff, 0xff, 0xff, 9, 1, 0, 0, 0];
        assert_eq!(
            read_all(&mut r, &wire),
            Err(ChunkError::MessageTooLarge {
                type_id: 9,
                length: 0xff_ffff,
                max: 1 << 20
            })
        );
        // Commands get the smaller cap.
        let mut r = reader();
        let wire = [3, 0, 0, 0, 0x10, 0, 0, 20, 0, 0, 0, 0];
        assert!(matches!(
            read_all(&mut r, &wire),
            Err(ChunkError::MessageTooLarge { type_id: 20, .. })
        ));
    }

    #[test]
    fn many_chunk_streams_and_unfinished_bytes_are_capped() {
        let mut r = reader();
        let mut wire = Vec::new();
        for csid in 0..100u8 {
            // 2-byte basic header (csid 64 + csid), then an empty audio message.
            wire.extend_from_slice(&[0, csid, 0, 0, 0, 0, 0, 0, 8, 1, 0, 0, 0]);
        }
        assert_eq!(
            read_all(&mut r, &wire),
            Err(ChunkError::TooManyChunkStreams(64))
        );

        // 60 streams each holding 1 MiB of an unfinished 8 MiB message.
        let mut r = reader();
        r.set_chunk_size(1 << 20).unwrap();
        let mut err = None;
        for csid in 3..63u8 {
            let mut wire = vec![csid, 0, 0, 0, 0x80, 0, 0, 9, 1, 0, 0, 0];
            wire.resize(12 + (1 << 20), 0);
            if let Err(e) = read_all(&mut r, &wire) {
                err = Some(e);
                break;
            }
        }
        assert!(
            matches!(err, Some(ChunkError::BufferedTooMuch(_))),
            "{err:?}"
        );
    }

    #[test]
    fn protocol_violations() {
        let mut r = reader();
        assert_eq!(
            read_all(&mut r, &[0x45, 0, 0, 0, 0, 0, 1, 8]),
            Err(ChunkError::NoPreviousHeader { csid: 5, fmt: 1 })
        );
        let mut r = reader();
        let mut wire = vec![6, 0, 0, 0, 0, 1, 0, 9, 1, 0, 0, 0];
        wire.extend_from_slice(&[0; 128]);
        wire.extend_from_slice(&[6, 0, 0, 0, 0, 0, 1, 9, 1, 0, 0, 0]);
        assert_eq!(
            read_all(&mut r, &wire),
            Err(ChunkError::Interrupted { csid: 6 })
        );
        // Abort lets a new message start.
        let mut r = reader();
        let mut data = &wire[..12 + 128];
        assert_eq!(r.next(&mut data), Ok(None));
        r.abort(6);
        let got = read_all(&mut r, &[6, 0, 0, 0, 0, 0, 1, 9, 1, 0, 0, 0, 42]).unwrap();
        assert_eq!(got[0].payload, &[42][..]);
    }

    #[test]
    fn zero_length_messages_complete_at_once() {
        let mut r = reader();
        let got = read_all(&mut r, &[4, 0, 0, 0, 0, 0, 0, 8, 1, 0, 0, 0, 0xc4, 0xc4]).unwrap();
        assert_eq!(got.len(), 3);
        assert!(got.iter().all(|m| m.payload.is_empty()));
    }
}
