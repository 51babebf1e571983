//! The Redis message body (CONTRACT §5): `1 <publish_unix_micros>\n` then the frame's JSON text.
//!
//! The gateway only slices the header off; it never parses or re-serialises the frame.

use bytes::Bytes;
use std::time::{SystemTime, UNIX_EPOCH};

/// The only wire version this build reads and writes.
pub const WIRE_VERSION: u8 = b'1';

/// Why a Redis message could not be read as a frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// No newline ends the header.
    #[error("wire message has no header line")]
    NoHeader,
    /// The version is not one this build knows (the message is dropped and counted).
    #[error("unknown wire version")]
    UnknownVersion,
    /// The timestamp is not a decimal integer.
    #[error("malformed wire header")]
    Malformed,
}

/// A frame taken off the wire.
#[derive(Debug, Clone)]
pub struct WireFrame {
    /// When the publisher stamped it, in microseconds since the Unix epoch.
    pub published_micros: u64,
    /// The exact frame text, sharing the buffer it arrived in.
    pub frame: Bytes,
}

/// Microseconds since the Unix epoch, now.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Appends the header to `buf`; the caller appends the frame after it.
pub fn write_header(buf: &mut Vec<u8>, published_micros: u64) {
    buf.push(WIRE_VERSION);
    buf.push(b' ');
    buf.extend_from_slice(published_micros.to_string().as_bytes());
    buf.push(b'\n');
}

/// Splits a message into its stamp and frame without copying the frame. UTF-8 is left to the
/// gateway's one conversion into a WebSocket text payload.
pub fn decode(message: Bytes) -> Result<WireFrame, WireError> {
    let newline = message
        .iter()
        .take(32)
        .position(|&b| b == b'\n')
        .ok_or(WireError::NoHeader)?;
    let header = &message[..newline];
    let (version, stamp) = match header {
        [v, b' ', rest @ ..] => (*v, rest),
        _ => return Err(WireError::Malformed),
    };
    if version != WIRE_VERSION {
        return Err(WireError::UnknownVersion);
    }
    let published_micros = std::str::from_utf8(stamp)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or(WireError::Malformed)?;
    let frame = message.slice(newline + 1..);
    Ok(WireFrame {
        published_micros,
        frame,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_frame_is_sliced_exactly() {
        let mut buf = Vec::new();
        write_header(&mut buf, 1_700_000_000_123_456);
        buf.extend_from_slice(br#"{"event":"x"}"#);
        let f = decode(Bytes::from(buf)).unwrap();
        assert_eq!(f.published_micros, 1_700_000_000_123_456);
        assert_eq!(&f.frame[..], br#"{"event":"x"}"#);
    }

    #[test]
    fn unknown_version_and_garbage_are_rejected() {
        assert_eq!(
            decode(Bytes::from_static(b"2 1\n{}")).unwrap_err(),
            WireError::UnknownVersion
        );
        assert_eq!(
            decode(Bytes::from_static(b"{}")).unwrap_err(),
            WireError::NoHeader
        );
        assert_eq!(
            decode(Bytes::from_static(b"1 x\n{}")).unwrap_err(),
            WireError::Malformed
        );
    }
}
