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
            early,
        }
    }
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
