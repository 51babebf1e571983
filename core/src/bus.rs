//! The fan-out bus as the publisher sees it: where published frames go. Implemented by the
//! publisher's Redis outlets and by the gateway's in-process broker (single-process mode without
//! Redis), so the ingest path is the same for both and neither side knows the other.

use crate::channel::ControlMessage;
use futures_util::future::BoxFuture;
use uuid::Uuid;

/// One message to publish: the wire header plus the frame, built once.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Target instance (channel `<prefix>:ws:<id>`).
    pub instance_id: Uuid,
    /// The exact version-1 Redis message body: header, then frame (shared, not copied, across
    /// regions). With history on, the Redis outlet sends [`Outgoing::frame`] and Redis builds the
    /// version-2 header around the offset it assigns.
    pub body: bytes::Bytes,
    /// The publish stamp written in the header, in Unix microseconds.
    pub published_micros: u64,
    /// Where the frame starts in `body` (the header's length).
    pub header_len: usize,
    /// Publish on the instance's channel (some gateway may hold a client). `false`: append to
    /// history only, for a resumable client that may come back ([`Audience::Resumable`]).
    pub live: bool,
}

impl Outgoing {
    /// A message from a version-1 body (`1 <micros>\n<frame>`, as
    /// [`crate::envelope::encode_message`] builds it).
    pub fn new(instance_id: Uuid, body: bytes::Bytes, published_micros: u64, live: bool) -> Self {
        let header_len = body
            .iter()
            .position(|&b| b == b'\n')
            .map_or(0, |newline| newline + 1);
        Outgoing {
            instance_id,
            body,
            published_micros,
            header_len,
            live,
        }
    }

    /// The frame text without the header (what history stores), sharing `body`.
    pub fn frame(&self) -> bytes::Bytes {
        self.body.slice(self.header_len..)
    }
}

/// Who may want an instance's frames (the ingest fast path), in increasing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Audience {
    /// Nobody: skip the frame (counted `noListeners`); nothing reaches Redis.
    Nobody,
    /// No gateway holds a client, but a resumable client may come back (`<prefix>:resume:<id>`
    /// exists): append to history without publishing (still counted `noListeners`).
    Resumable,
    /// Some gateway may hold a client: append (with history on) and publish.
    Live,
}

impl Audience {
    /// From the live answer alone (buses without history).
    pub fn from_listening(listening: bool) -> Audience {
        if listening {
            Audience::Live
        } else {
            Audience::Nobody
        }
    }
}

/// The bus could not take the messages.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Redis failed or timed out.
    #[error("redis unavailable")]
    Redis(#[from] fred::error::Error),
    /// Redis did not answer in time.
    #[error("redis timed out")]
    Timeout,
    /// The in-process bus is not wired yet.
    #[error("event bus unavailable")]
    Unavailable,
}

/// A fan-out bus as the publisher sees it.
pub trait Bus: Send + Sync + 'static {
    /// For each id: could some gateway hold a client of it? Must never answer `false` for an
    /// instance whose client already got its 101 (false positives are harmless).
    fn listening<'a>(&'a self, ids: &'a [Uuid]) -> BoxFuture<'a, Result<Vec<bool>, BusError>>;
    /// For each id: who may want its frames. Same rule as [`Bus::listening`] for
    /// [`Audience::Live`]; buses with history also answer [`Audience::Resumable`]. The
    /// default knows only `listening`.
    fn audience<'a>(&'a self, ids: &'a [Uuid]) -> BoxFuture<'a, Result<Vec<Audience>, BusError>> {
        Box::pin(async move {
            let live = self.listening(ids).await?;
            Ok(live.into_iter().map(Audience::from_listening).collect())
        })
    }
    /// Publishes in order (per instance, at least). Messages with `live == false` go only to
    /// history; a bus without history drops them.
    fn publish(&self, messages: Vec<Outgoing>) -> BoxFuture<'_, Result<(), BusError>>;
    /// Sends a control message to every gateway.
    fn control<'a>(&'a self, msg: &'a ControlMessage) -> BoxFuture<'a, Result<(), BusError>>;
    /// Whether the bus can take messages now (publisher readiness).
    fn is_ready(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_is_the_body_past_its_header() {
        let body = bytes::Bytes::from_static(b"1 42\n{\"event\":\"x\"}");
        let m = Outgoing::new(Uuid::nil(), body, 42, true);
        assert_eq!(m.header_len, 5);
        assert_eq!(&m.frame()[..], b"{\"event\":\"x\"}");
        assert!(Audience::Live > Audience::Resumable && Audience::Resumable > Audience::Nobody);
    }
}
