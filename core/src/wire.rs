//! The Redis message body (CONTRACT §5): a one-line header, then the frame's JSON text.
//!
//! - version 1: `1 <publish_unix_micros>\n`
//! - version 2 (history on, SPEC D37): `2 <publish_unix_micros> <offset>\n`, where the offset is
//!   the entry id of the frame in the instance's history stream (`<ms>-<seq>`).
//!
//! The gateway only slices the header off; it never parses or re-serialises the frame.

use bytes::Bytes;
use std::time::{SystemTime, UNIX_EPOCH};

/// The wire version without an offset (history off).
pub const WIRE_VERSION: u8 = b'1';
/// The wire version with the history offset.
pub const WIRE_VERSION_OFFSET: u8 = b'2';

/// Longest offset text accepted (SPEC D36: at most 64 bytes).
pub const MAX_OFFSET_LEN: usize = 64;

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

/// A position in an instance's history: a Redis Stream entry id `<ms>-<seq>` (SPEC D36).
/// Ordered as the stream orders its entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Offset {
    /// Milliseconds part.
    pub ms: u64,
    /// Sequence within the millisecond.
    pub seq: u64,
}

impl Offset {
    /// Before every entry (`0-0`): an instance whose stream holds nothing yet.
    pub const ZERO: Offset = Offset { ms: 0, seq: 0 };

    /// Parses `<ms>-<seq>` (decimal, no sign, no spaces); `None` for anything else.
    pub fn parse(text: &[u8]) -> Option<Offset> {
        if text.is_empty() || text.len() > MAX_OFFSET_LEN {
            return None;
        }
        let text = std::str::from_utf8(text).ok()?;
        let (ms, seq) = text.split_once('-')?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return None;
        }
        Some(Offset {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl std::fmt::Display for Offset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// A frame taken off the wire.
#[derive(Debug, Clone)]
pub struct WireFrame {
    /// When the publisher stamped it, in microseconds since the Unix epoch.
    pub published_micros: u64,
    /// Its position in the instance's history (wire version 2), if history is on.
    pub offset: Option<Offset>,
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

/// Appends a version-2 header (with `offset`) to `buf`.
pub fn write_header_v2(buf: &mut Vec<u8>, published_micros: u64, offset: Offset) {
    buf.push(WIRE_VERSION_OFFSET);
    buf.push(b' ');
    buf.extend_from_slice(published_micros.to_string().as_bytes());
    buf.push(b' ');
    buf.extend_from_slice(offset.to_string().as_bytes());
    buf.push(b'\n');
}

/// Splits a message into its stamp, offset and frame without copying the frame. UTF-8 is left
/// to the gateway's one conversion into a WebSocket text payload. Reads versions 1 and 2.
pub fn decode(message: Bytes) -> Result<WireFrame, WireError> {
    let newline = message
        .iter()
        .take(32 + MAX_OFFSET_LEN)
        .position(|&b| b == b'\n')
        .ok_or(WireError::NoHeader)?;
    let header = &message[..newline];
    let (version, rest) = match header {
        [v, b' ', rest @ ..] => (*v, rest),
        _ => return Err(WireError::Malformed),
    };
    let (stamp, offset) = match version {
        WIRE_VERSION => (rest, None),
        WIRE_VERSION_OFFSET => {
            let space = rest
                .iter()
                .position(|&b| b == b' ')
                .ok_or(WireError::Malformed)?;
            let offset = Offset::parse(&rest[space + 1..]).ok_or(WireError::Malformed)?;
            (&rest[..space], Some(offset))
        }
        _ => return Err(WireError::UnknownVersion),
    };
    let published_micros = std::str::from_utf8(stamp)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or(WireError::Malformed)?;
    let frame = message.slice(newline + 1..);
    Ok(WireFrame {
        published_micros,
        offset,
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
    fn version_two_carries_the_offset() {
        let mut buf = Vec::new();
        let offset = Offset {
            ms: 1733512345678,
            seq: 3,
        };
        write_header_v2(&mut buf, 42, offset);
        assert!(buf.starts_with(b"2 42 1733512345678-3\n"));
        buf.extend_from_slice(br#"{"event":"x"}"#);
        let f = decode(Bytes::from(buf)).unwrap();
        assert_eq!((f.published_micros, f.offset), (42, Some(offset)));
        assert_eq!(&f.frame[..], br#"{"event":"x"}"#);
        assert_eq!(
            decode(Bytes::from_static(b"2 1\n{}")).unwrap_err(),
            WireError::Malformed
        );
    }

    #[test]
    fn offsets_parse_strictly_and_order_as_the_stream_does() {
        let o = |s: &str| Offset::parse(s.as_bytes());
        assert_eq!(o("5-1"), Some(Offset { ms: 5, seq: 1 }));
        assert!(o("5-1") < o("5-2") && o("5-9") < o("6-0"));
        for bad in ["", "5", "-1", "5-", "a-1", "5-1-2", " 5-1", "+5-1", "now"] {
            assert_eq!(o(bad), None, "{bad:?}");
        }
        assert_eq!(o(&"9".repeat(70)), None);
        assert_eq!(Offset { ms: 7, seq: 0 }.to_string(), "7-0");
    }

    #[test]
    fn unknown_version_and_garbage_are_rejected() {
        assert_eq!(
            decode(Bytes::from_static(b"3 1\n{}")).unwrap_err(),
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
