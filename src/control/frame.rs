//! Framing: 4-byte big-endian length, then that many bytes of JSON.
//!
//! Why this exists: a stream socket has no message boundaries, and a length
//! prefix is the simplest boundary that a hostile peer cannot abuse — the
//! length is checked against `MAX_FRAME` before a byte of payload is
//! buffered. `FrameDecoder` is pure (bytes in, frames out) so it is
//! property-tested on arbitrary input; the async helpers only move bytes.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest payload accepted or sent.
pub const MAX_FRAME: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}

/// Incremental decoder: feed bytes, take complete frames.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buffer: Vec<u8>,
}

impl FrameDecoder {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed, or an
    /// error for a length over the limit (checked before buffering payload).
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let Some(header) = self.buffer.first_chunk::<4>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*header) as usize;
        if len > MAX_FRAME {
            return Err(FrameError::TooLarge(len));
        }
        if self.buffer.len() < 4 + len {
            return Ok(None);
        }
        let frame = self.buffer[4..4 + len].to_vec();
        self.buffer.drain(..4 + len);
        Ok(Some(frame))
    }

    /// Bytes of an unfinished frame.
    pub fn pending(&self) -> usize {
        self.buffer.len()
    }
}

/// Reads one frame; `Ok(None)` on a clean close between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    decoder: &mut FrameDecoder,
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(frame) = decoder.next_frame()? {
            return Ok(Some(frame));
        }
        let n = reader.read(&mut chunk).await?;
        if n == 0 {
            return if decoder.pending() == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated)
            };
        }
        decoder.push(&chunk[..n]);
    }
}

pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    payload: &[u8],
) -> Result<(), FrameError> {
    if payload.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(payload.len()));
    }
    let mut bytes = Vec::with_capacity(4 + payload.len());
    bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    bytes.extend_from_slice(payload);
    writer.write_all(&bytes).await?;
    writer.flush().await?;
    Ok(())
}

/// Encodes a frame synchronously (clients, tests).
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(4 + payload.len());
    bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_across_pushes_are_reassembled() {
        let mut decoder = FrameDecoder::default();
        let bytes = [encode(b"{\"a\":1}"), encode(b"[]")].concat();
        decoder.push(&bytes[..3]);
        assert!(decoder.next_frame().unwrap().is_none());
        decoder.push(&bytes[3..]);
        assert_eq!(decoder.next_frame().unwrap().unwrap(), b"{\"a\":1}");
        assert_eq!(decoder.next_frame().unwrap().unwrap(), b"[]");
        assert!(decoder.next_frame().unwrap().is_none());
    }

    #[test]
    fn an_oversize_length_is_refused_before_its_payload_arrives() {
        let mut decoder = FrameDecoder::default();
        decoder.push(&((MAX_FRAME as u32) + 1).to_be_bytes());
        assert!(matches!(decoder.next_frame(), Err(FrameError::TooLarge(_))));
    }
}
