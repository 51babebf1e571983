//! The byte stream under a session's WebSocket library: reads come from the TCP socket (after
//! the bytes hyper read past the handshake), writes join the outbox's ordered wire, which the
//! hub writes live frames to directly (see `outbox`).

use crate::outbox::Outbox;
use bytes::{Buf, Bytes};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A session's socket as the WebSocket library sees it.
pub struct SessionIo {
    sock: Arc<TcpStream>,
    outbox: Arc<Outbox>,
    /// Read by hyper after the request head: the client's first frames, if it was quick.
    early: Bytes,
}

impl SessionIo {
    /// The socket of an upgraded connection; `early` are bytes read past the handshake.
    pub fn new(sock: Arc<TcpStream>, outbox: Arc<Outbox>, early: Bytes) -> SessionIo {
        SessionIo {
            sock,
            outbox,
            early: detach(early),
        }
    }
}

/// A copy of `early` that shares no allocation with it: hyper hands over a view into its read
/// buffer (8 KiB and up), which the view, even an empty one, would otherwise keep allocated
/// for the session's lifetime (it doubled the idle RSS per connection, docs/benchmarks.md).
fn detach(early: Bytes) -> Bytes {
    Bytes::copy_from_slice(&early)
}

impl AsyncRead for SessionIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.early.is_empty() {
            let n = this.early.len().min(buf.remaining());
            buf.put_slice(&this.early[..n]);
            this.early.advance(n);
            if this.early.is_empty() {
                // Free it now rather than with the session.
                this.early = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.sock.poll_read_ready(cx)?.is_pending() {
                return Poll::Pending;
            }
            match this.sock.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SessionIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.outbox.poll_write_raw(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.outbox.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.outbox.poll_flush(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_bytes_keep_nothing_of_the_read_buffer_alive() {
        let buffer = Bytes::from(vec![7u8; 64 * 1024]);
        let range = buffer.as_ptr_range();
        let inside = |b: &Bytes| range.contains(&b.as_ptr());
        let some = detach(buffer.slice(100..110));
        assert_eq!(&some[..], &[7u8; 10]);
        assert!(!inside(&some), "a copy, not a view");
        let none = detach(buffer.slice(200..200));
        assert!(none.is_empty() && !inside(&none));
    }
}
