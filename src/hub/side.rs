//! Side tracks: what a publisher sent, as it sent it, for consumers that
//! must not get the viewers' re-encoded form (a restream sends the RTMP
//! publisher's own AAC, not the Opus viewers get).
//!
//! Kept apart from the viewer fan-out on purpose: no GOP cache, no frame
//! index, its own sink list, so viewers pay nothing when nobody listens
//! (one uncontended lock and an empty `Vec` per packet).

use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use super::{Publisher, PushError, Stream};

/// One AAC access unit as the publisher sent it (no ADTS header).
#[derive(Debug)]
pub struct SourceAac {
    /// The AudioSpecificConfig in force (shared, changes only with a new
    /// sequence header).
    pub config: Bytes,
    pub payload: Bytes,
    /// On the stream's 90 kHz video clock (the hub's `Frame::rtp_time` for
    /// video), so a consumer muxes audio and video on one timeline.
    pub rtp_time_90k: u32,
    pub publisher: u64,
}

/// Receives a stream's side-track packets. Runs on the publisher's task:
/// it must only enqueue.
pub trait SideSink: Send + Sync {
    fn deliver_aac(&self, stream: &Arc<Stream>, aac: &Arc<SourceAac>);
}

/// Copied on write, as the viewers' sink list is.
type SideSinks = Arc<Vec<(u64, Arc<dyn SideSink>)>>;

#[derive(Default)]
pub(super) struct SideTracks {
    sinks: Mutex<SideSinks>,
}

impl Stream {
    pub fn attach_side_sink(&self, id: u64, sink: Arc<dyn SideSink>) {
        let mut s = self.side.sinks.lock();
        Arc::make_mut(&mut s).push((id, sink));
    }

    /// Hands side-track AAC made from this stream's own media (a WHIP
    /// publisher's Opus, transcoded once per stream) to the side sinks.
    pub fn deliver_side_aac(self: &Arc<Self>, aac: &Arc<SourceAac>) {
        let sinks = self.side.sinks.lock().clone();
        for (_, s) in sinks.iter() {
            s.deliver_aac(self, aac);
        }
    }

    pub fn detach_side_sink(&self, id: u64) {
        let mut s = self.side.sinks.lock();
        Arc::make_mut(&mut s).retain(|(i, _)| *i != id);
    }
}

impl Publisher {
    /// Hands the publisher's original AAC to side sinks; `pub_ms` is on the
    /// publisher's clock, as for [`Publisher::push_video`].
    pub fn push_source_aac(
        &self,
        pub_ms: i64,
        config: &Bytes,
        payload: &Bytes,
    ) -> Result<(), PushError> {
        let sinks = self.stream.side.sinks.lock().clone();
        if sinks.is_empty() {
            return Ok(());
        }
        self.check_size(payload.len())?;
        let stream_ms = {
            let mut st = self.current()?;
            st.timeline.map(pub_ms, std::time::Instant::now()).0
        };
        let aac = Arc::new(SourceAac {
            config: config.clone(),
            payload: payload.clone(),
            rtp_time_90k: (stream_ms * 90) as u32,
            publisher: self.id,
        });
        for (_, s) in sinks.iter() {
            s.deliver_aac(&self.stream, &aac);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{FrameSink, Hub, IngestProtocol};

    struct Collect(Mutex<Vec<Arc<SourceAac>>>);
    impl SideSink for Collect {
        fn deliver_aac(&self, _s: &Arc<Stream>, a: &Arc<SourceAac>) {
            self.0.lock().push(a.clone());
        }
    }
    struct Frames(Mutex<Vec<u32>>);
    impl FrameSink for Frames {
        fn deliver(&self, _s: &Arc<Stream>, f: &Arc<crate::hub::Frame>) {
            self.0.lock().push(f.rtp_time);
        }
    }

    #[test]
    fn source_aac_shares_the_video_clock_and_skips_viewers() {
        let hub = Hub::new();
        let s = hub.ensure_stream("a", None);
        let side = Arc::new(Collect(Mutex::new(vec![])));
        let frames = Arc::new(Frames(Mutex::new(vec![])));
        let fs: Arc<dyn FrameSink> = frames.clone();
        s.attach_sink(1, &fs);
        let p = hub.publish(&s, IngestProtocol::Rtmp);
        let cfg = Bytes::from_static(&[0x12, 0x10]);
        // Nobody listens: nothing is done (not even the timeline).
        p.push_source_aac(0, &cfg, &Bytes::from_static(&[1]))
            .unwrap();
        s.attach_side_sink(7, side.clone());
        p.push_video(1000, true, Box::new([Arc::from(vec![0x65u8; 4])]))
            .unwrap();
        p.push_source_aac(1000, &cfg, &Bytes::from_static(&[2, 3]))
            .unwrap();
        let got = side.0.lock().clone();
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0].rtp_time_90k,
            frames.0.lock()[0],
            "same clock as video"
        );
        assert_eq!(frames.0.lock().len(), 1, "viewers got no AAC");
        s.detach_side_sink(7);
        p.push_source_aac(1020, &cfg, &Bytes::from_static(&[4]))
            .unwrap();
        assert_eq!(side.0.lock().len(), 1);
        // A taken-over publisher's AAC is refused like its frames.
        let _p2 = hub.publish(&s, IngestProtocol::Rtmp);
        s.attach_side_sink(7, side.clone());
        assert!(
            p.push_source_aac(1040, &cfg, &Bytes::from_static(&[5]))
                .is_err()
        );
    }
}
