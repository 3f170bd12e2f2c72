//! The config API's stream: what flows between a sidecar and the operator on one long-lived
//! HTTP/2 request.
//!
//! `POST /v1/snapshots/{namespace}/{pod}` with `Authorization: Bearer <projected token>`. The
//! response body carries snapshots, the request body carries the sidecar's acknowledgements, both
//! as **frames**: a 4-byte big-endian length, then that many bytes of JSON. Why frames of JSON
//! on plain HTTP/2 rather than gRPC: the types are the serde types of this crate, shared with
//! local mode, so there is no second schema (protobuf) to keep in step and no code generator in
//! the build; HTTP/2 already gives one stream per sidecar, flow control per stream and pings, which
//! is what gRPC would add on top; and `curl --http2` can read a stream.
//!
//! A frame longer than [`MAX_FRAME`] is refused: it bounds what either side buffers.

use serde::{Deserialize, Serialize};

use super::SnapshotVersion;

/// The path prefix of the stream; the pod follows as `{namespace}/{pod}`.
pub const PATH: &str = "/v1/snapshots/";
/// The longest frame either side accepts (a snapshot of thousands of Services fits).
pub const MAX_FRAME: usize = 64 * 1024 * 1024;
/// The audience a sidecar's projected ServiceAccount token is issued for.
pub const TOKEN_AUDIENCE: &str = "breakwater.dev/config";

/// A sidecar's answer to one snapshot.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Ack {
    /// The version answered.
    pub version: SnapshotVersion,
    /// `None`: applied and enforced; `Some(why)`: refused, the previous snapshot stays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `payload` as one frame.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 4);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Why a frame could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces more than [`MAX_FRAME`].
    #[error("a frame of {0} bytes is longer than the {MAX_FRAME} allowed")]
    TooLong(usize),
    /// The stream ended inside a frame.
    #[error("the stream ended {0} bytes into a frame")]
    Truncated(usize),
}

/// Splits a byte stream into frames.
#[derive(Debug, Default)]
pub struct Frames {
    buffer: Vec<u8>,
}

impl Frames {
    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete frame, if one is buffered.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        if self.buffer.len() < 4 {
            return Ok(None);
        }
        let len =
            u32::from_be_bytes([self.buffer[0], self.buffer[1], self.buffer[2], self.buffer[3]]) as usize;
        if len > MAX_FRAME {
            return Err(FrameError::TooLong(len));
        }
        if self.buffer.len() < 4 + len {
            return Ok(None);
        }
        let rest = self.buffer.split_off(4 + len);
        let mut frame = std::mem::replace(&mut self.buffer, rest);
        frame.drain(..4);
        Ok(Some(frame))
    }

    /// Called when the stream ended: an error if it ended inside a frame.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buffer.is_empty() { Ok(()) } else { Err(FrameError::Truncated(self.buffer.len())) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_survive_any_split_and_refuse_what_is_too_long_or_cut() {
        let stream: Vec<u8> = [frame(b"{\"a\":1}"), frame(b""), frame(b"[2]")].concat();
        for cut in 0..stream.len() {
            let mut f = Frames::default();
            let mut got = Vec::new();
            for part in [&stream[..cut], &stream[cut..]] {
                f.push(part);
                while let Some(frame) = f.next_frame().expect("well formed") {
                    got.push(frame);
                }
            }
            assert_eq!(got, [b"{\"a\":1}".to_vec(), Vec::new(), b"[2]".to_vec()], "cut at {cut}");
            assert_eq!(f.finish(), Ok(()));
        }
        let mut f = Frames::default();
        f.push(&((MAX_FRAME + 1) as u32).to_be_bytes());
        assert_eq!(f.next_frame(), Err(FrameError::TooLong(MAX_FRAME + 1)));
        let mut f = Frames::default();
        f.push(&frame(b"12345")[..6]);
        assert_eq!(f.next_frame(), Ok(None));
        assert_eq!(f.finish(), Err(FrameError::Truncated(6)));
    }
}
