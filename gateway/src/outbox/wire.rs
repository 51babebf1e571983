//! What the hub writes to a socket directly: a frame's WebSocket header and its shared
//! payload. Server frames are unmasked (RFC 6455 §5.1), so the header depends on the length
//! alone: 2–10 bytes computed without allocating, the payload never copied.

use bytes::Bytes;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use tokio::net::TcpStream;

/// Most queued items gathered into one vectored write.
const GATHER: usize = 64;

/// The header of an unmasked text frame with FIN set.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    bytes: [u8; 10],
    len: u8,
}

impl Header {
    /// The header of a text frame of `len` payload bytes.
    pub fn text(len: usize) -> Header {
        let mut bytes = [0u8; 10];
        bytes[0] = 0x81;
        let n = if len < 126 {
            bytes[1] = len as u8;
            2
        } else if let Ok(short) = u16::try_from(len) {
            bytes[1] = 126;
            bytes[2..4].copy_from_slice(&short.to_be_bytes());
            4
        } else {
            bytes[1] = 127;
            bytes[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        };
        Header { bytes, len: n }
    }

    /// No header: bytes the WebSocket library encoded already (control frames).
    pub fn none() -> Header {
        Header {
            bytes: [0; 10],
            len: 0,
        }
    }

    /// The encoded header.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

/// Bytes accepted for the socket that it did not take yet.
#[derive(Debug)]
pub struct Out {
    /// The frame header (empty for encoded control frames).
    pub head: Header,
    /// The payload, shared with every other connection of the frame.
    pub body: Bytes,
    /// The publisher's stamp of a live frame (counted against the caps and in
    /// `ryze_gateway_frames_sent_total` once written); `None` for control frames.
    pub stamp: Option<u64>,
}

impl Out {
    /// Bytes on the wire.
    pub fn len(&self) -> usize {
        self.head.len as usize + self.body.len()
    }
}

/// Writes one frame without blocking; returns the bytes the socket took.
///
/// Straight on the (non-blocking) socket rather than through tokio's readiness check: the
/// fan-out calls this once per client per frame, and tokio's check touches the connection's
/// readiness state, a cache line of its own, for a write that almost always succeeds
/// (docs/benchmarks.md). A `WouldBlock` here leaves tokio's readiness stale, which is
/// harmless: the bytes are then queued and the session's flush writes through tokio, whose
/// own `WouldBlock` clears it before waiting.
pub fn write_frame(sock: &TcpStream, head: &Header, body: &[u8]) -> io::Result<usize> {
    socket2::SockRef::from(sock).send_vectored(&[IoSlice::new(head.as_slice()), IoSlice::new(body)])
}

/// Writes the front of `queue` without blocking, its first `sent` bytes being on the wire
/// already; returns the bytes the socket took.
pub fn write_queue(sock: &TcpStream, queue: &VecDeque<Out>, sent: usize) -> io::Result<usize> {
    let mut skip = sent;
    let mut iov: Vec<IoSlice<'_>> = Vec::with_capacity(2 * GATHER.min(queue.len()));
    for out in queue.iter().take(GATHER) {
        for part in [out.head.as_slice(), &out.body[..]] {
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            iov.push(IoSlice::new(&part[skip..]));
            skip = 0;
        }
    }
    sock.try_write_vectored(&iov)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_follow_rfc_6455_length_encoding() {
        assert_eq!(Header::text(0).as_slice(), [0x81, 0]);
        assert_eq!(Header::text(125).as_slice(), [0x81, 125]);
        assert_eq!(Header::text(126).as_slice(), [0x81, 126, 0, 126]);
        assert_eq!(Header::text(65_535).as_slice(), [0x81, 126, 0xff, 0xff]);
        assert_eq!(
            Header::text(65_536).as_slice(),
            [0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]
        );
        assert!(Header::none().as_slice().is_empty());
    }
}
