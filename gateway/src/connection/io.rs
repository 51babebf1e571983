//! The byte stream under a session's WebSocket library: reads come from the TCP socket (after
//! the bytes hyper read past the handshake), writes join the outbox's ordered wire, which the
//! hub writes live frames to directly (see `outbox`).
//!
//! The library is given no read buffer of its own (`WsLimits::read_buffer` is 0), so an idle
//! connection holds none; it then asks for at most 14 bytes at a time. So that a client's
//! frame still costs one `read` per [`READ_CHUNK`] rather than one per 14 bytes, small reads
//! are served from a chunk read on the stack, and what the library did not take yet is kept
//! on the heap only until it does.

use crate::outbox::Outbox;
use bytes::{Buf, Bytes};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read from the socket at once when the library asks for fewer.
const READ_CHUNK: usize = 4096;

/// A session's socket as the WebSocket library sees it.
pub struct SessionIo {
    /// Owns the socket ([`Outbox::connect`]): reads go through it too.
    outbox: Arc<Outbox>,
    /// Read but not yet handed to the library: the client's first frames if hyper read them
    /// past the request head, then the rest of a chunk. Empty (no allocation) when idle.
    ahead: Bytes,
}

impl SessionIo {
    /// The socket of an upgraded connection, given to `outbox` already; `early` are bytes
    /// read past the handshake.
    pub fn new(outbox: Arc<Outbox>, early: Bytes) -> SessionIo {
        SessionIo {
            outbox,
            ahead: detach(early),
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
        if !this.ahead.is_empty() {
            let n = this.ahead.len().min(buf.remaining());
            buf.put_slice(&this.ahead[..n]);
            this.ahead.advance(n);
            if this.ahead.is_empty() {
                // Free it now rather than with the session.
                this.ahead = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() >= READ_CHUNK {
            let n = ready!(this.outbox.poll_read(cx, buf.initialize_unfilled()))?;
            buf.advance(n);
            return Poll::Ready(Ok(()));
        }
        let mut chunk = [0u8; READ_CHUNK];
        let n = ready!(this.outbox.poll_read(cx, &mut chunk))?;
        let give = n.min(buf.remaining());
        buf.put_slice(&chunk[..give]);
        if give < n {
            this.ahead = Bytes::copy_from_slice(&chunk[give..n]);
        }
        Poll::Ready(Ok(()))
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

    #[tokio::test]
    async fn small_reads_are_served_from_one_socket_read_and_keep_nothing_once_taken() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut peer = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (sock, _) = listener.accept().await.unwrap();
        let outbox = Arc::new(Outbox::new(1, 1024));
        outbox.connect(sock, crate::metrics::Metrics::new(0));
        let mut io = SessionIo::new(outbox, Bytes::from_static(b"early"));
        let sent: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        peer.write_all(&sent).await.unwrap();
        drop(peer);
        // As the WebSocket library reads without a buffer of its own: 14 bytes at a time.
        let mut piece = [0u8; 14];
        let n = io.read(&mut piece).await.unwrap();
        assert_eq!(&piece[..n], b"early");
        let n = io.read(&mut piece).await.unwrap();
        let mut got = piece[..n].to_vec();
        // That read took the whole write off the socket (one loopback segment), not 14 bytes.
        assert_eq!(n + io.ahead.len(), sent.len());
        loop {
            let n = io.read(&mut piece).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&piece[..n]);
        }
        assert_eq!(got, sent);
        assert!(io.ahead.is_empty());
    }
}
