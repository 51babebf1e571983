//! Opt-in resume on `/ws/:instance` (SPEC §5.7, D36): the `since` parameter, and what a
//! resuming session sends before its live frames.
//!
//! The seam: the client is attached to the hub first (live frames queue in its outbox), then
//! history after its offset is read, then the session writes the retained frames, then the
//! queued live frames, dropping those already replayed (offset ≤ the last one replayed). So
//! nothing published after the offset is missed or sent twice.

use crate::broker::History;
use crate::error::ApiError;
use crate::outbox::Frame;
use ryze_core::wire::Offset;
use std::collections::VecDeque;
use tungstenite::Utf8Bytes;

/// Most frames replayed to one connection (history keeps at most `HISTORY_SIZE` per
/// instance; this bounds a session whatever the publisher's setting).
pub const MAX_REPLAY: usize = 100_000;

/// The `since` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// `since=now`: live frames from the 101, each with its offset.
    Now,
    /// `since=<offset>`: retained frames after it first.
    After(Offset),
}

/// Reads `since` from the query: absent → `None` (documented behaviour, no offsets). Empty,
/// over 64 bytes, not an offset or `now`, or given twice → 400 `Invalid since parameter`.
pub fn parse_since(query: Option<&str>) -> Result<Option<Since>, ApiError> {
    let mut found = None;
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if key != "since" {
            continue;
        }
        if found.is_some() {
            return Err(ApiError::InvalidSince);
        }
        found = Some(if value == "now" {
            Since::Now
        } else {
            Since::After(Offset::parse(value.as_bytes()).ok_or(ApiError::InvalidSince)?)
        });
    }
    Ok(found)
}

/// What a resuming session sends before (and how it filters) its live frames.
#[derive(Debug, Default)]
pub struct Resume {
    /// Frames carry `"offset"` (the connection gave `since`).
    pub offsets: bool,
    /// Send `stream.gap` with this offset before the first frame.
    pub gap: Option<String>,
    /// Retained frames to write before the live ones.
    pub replay: VecDeque<Frame>,
    /// Live frames at or before this offset were replayed already.
    pub replayed_through: Option<Offset>,
}

impl Resume {
    /// The session of a connection that gave `since` and found `history` after it.
    pub fn after(since: Offset, history: History) -> Resume {
        // Nothing at or before `since` may follow either: the pod may still be catching up
        // from an older offset (D38) than the one this client already reached elsewhere.
        // After a gap `since` may not be this stream's, so only what was replayed counts.
        let replayed_through = history
            .frames
            .last()
            .map(|(id, _)| *id)
            .or((!history.gap).then_some(since));
        let replay = history
            .frames
            .into_iter()
            .filter_map(|(offset, bytes)| {
                let text = Utf8Bytes::try_from(bytes).ok()?;
                Some(Frame {
                    with_offset: Some(Utf8Bytes::from(ryze_core::envelope::with_offset(
                        text.as_str(),
                        offset,
                    ))),
                    text,
                    published_micros: 0,
                    offset: Some(offset),
                })
            })
            .collect();
        Resume {
            offsets: true,
            gap: history.gap.then(|| since.to_string()),
            replay,
            replayed_through,
        }
    }

    /// A `since=now` session: offsets on live frames, nothing before them.
    pub fn now() -> Resume {
        Resume {
            offsets: true,
            ..Resume::default()
        }
    }

    /// Whether a live frame was already replayed (and must be dropped).
    pub fn already_sent(&self, frame: &Frame) -> bool {
        match (self.replayed_through, frame.offset) {
            (Some(through), Some(offset)) => offset <= through,
            _ => false,
        }
    }

    /// The text this session writes for `frame`: with its offset on a resuming connection.
    pub fn text_of(&self, frame: Frame) -> Utf8Bytes {
        if !self.offsets {
            return frame.text;
        }
        match (frame.with_offset, frame.offset) {
            (Some(t), _) => t,
            // Queued before the hub knew of a resumable client: spliced here, once.
            (None, Some(offset)) => Utf8Bytes::from(ryze_core::envelope::with_offset(
                frame.text.as_str(),
                offset,
            )),
            (None, None) => frame.text,
        }
    }

    /// The `stream.gap` frame to send before `first`, if one is due (built from `first`'s
    /// `instanceData`, so the gateway needs no copy of the publisher's settings).
    pub fn take_gap(&mut self, first: &Frame) -> Option<Utf8Bytes> {
        let since = self.gap.take()?;
        let idata = ryze_core::envelope::instance_data_of(first.text.as_str())?;
        Some(Utf8Bytes::from(ryze_core::envelope::gap_frame(
            &since, idata,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_optional_now_or_an_offset_and_strict_otherwise() {
        assert_eq!(parse_since(None).unwrap(), None);
        assert_eq!(parse_since(Some("token=x")).unwrap(), None);
        assert_eq!(parse_since(Some("since=now")).unwrap(), Some(Since::Now));
        assert_eq!(
            parse_since(Some("token=x&since=12-3")).unwrap(),
            Some(Since::After(Offset { ms: 12, seq: 3 }))
        );
        let long = format!("since={}-1", "1".repeat(64));
        for bad in [
            "since=",
            "since=NOW",
            "since=12",
            "since=a-b",
            "since=1-1&since=1-1",
            &long,
        ] {
            assert!(
                matches!(parse_since(Some(bad)), Err(ApiError::InvalidSince)),
                "{bad}"
            );
        }
    }

    fn frame(offset: u64) -> Frame {
        Frame {
            text: Utf8Bytes::from(format!(
                r#"{{"event":"call.update","data":{{"n":{offset}}},"instanceData":{{"instance":"s"}}}}"#
            )),
            published_micros: 0,
            offset: Some(Offset { ms: offset, seq: 0 }),
            with_offset: None,
        }
    }

    #[test]
    fn replayed_frames_are_not_sent_again_and_texts_carry_offsets() {
        let history = History {
            gap: true,
            frames: vec![
                (Offset { ms: 2, seq: 0 }, Bytes::from(frame(2).text)),
                (Offset { ms: 3, seq: 0 }, Bytes::from(frame(3).text)),
            ],
        };
        let mut r = Resume::after(Offset { ms: 1, seq: 0 }, history);
        assert!(r.already_sent(&frame(3)) && !r.already_sent(&frame(4)));
        let first = r.replay.front().cloned().unwrap();
        assert_eq!(
            r.take_gap(&first).unwrap().as_str(),
            r#"{"event":"stream.gap","data":{"since":"1-0"},"instanceData":{"instance":"s"}}"#
        );
        assert!(r.take_gap(&first).is_none(), "one gap");
        assert!(r
            .text_of(frame(4))
            .as_str()
            .ends_with(r#","offset":"4-0"}"#));
        assert!(!Resume::default()
            .text_of(frame(4))
            .as_str()
            .contains("offset"));
    }

    #[test]
    fn nothing_at_or_before_since_follows_even_when_nothing_was_replayed() {
        let at = |ms| Offset { ms, seq: 0 };
        let caught_up = Resume::after(at(5), History::default());
        assert!(caught_up.already_sent(&frame(4)) && caught_up.already_sent(&frame(5)));
        assert!(!caught_up.already_sent(&frame(6)));
        // After a gap the offset may belong to another stream: newer frames of this one may
        // carry smaller ids, and must go out.
        let gap = Resume::after(
            at(5),
            History {
                gap: true,
                frames: Vec::new(),
            },
        );
        assert!(!gap.already_sent(&frame(4)));
    }
    use bytes::Bytes;
}
