//! Hand-written HTTP and WebSocket clients for what the regular ones cannot do: read a
//! refused handshake byte for byte, never answer a ping, send malformed frames.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::WAIT;

/// A raw HTTP/1.1 response.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Whether the server closed the connection after the response (read EOF within 5 s);
    /// only checked by [`raw_http_then_eof`].
    pub closed: bool,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `head` (request line and headers, without the final blank line) and reads one
/// response with a `Content-Length` body (`closed` is left false).
pub async fn raw_http(addr: SocketAddr, head: &str) -> RawResponse {
    tokio::time::timeout(WAIT, raw_http_inner(addr, head, false))
        .await
        .expect("raw HTTP timed out")
        .expect("raw HTTP")
}

/// Like [`raw_http`], then waits up to 5 s for the server to close the connection.
pub async fn raw_http_then_eof(addr: SocketAddr, head: &str) -> RawResponse {
    tokio::time::timeout(WAIT, raw_http_inner(addr, head, true))
        .await
        .expect("raw HTTP timed out")
        .expect("raw HTTP")
}

async fn raw_http_inner(
    addr: SocketAddr,
    head: &str,
    check_eof: bool,
) -> anyhow::Result<RawResponse> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("{}\r\n\r\n", head.trim_end().replace('\n', "\r\n"));
    stream.write_all(request.as_bytes()).await?;
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed before the response head");
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let text = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = text.split("\r\n");
    let status_line = lines.next().context("status line")?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let mut rest = [0u8; 64];
    // After a 101 the connection is a WebSocket: it stays open.
    let closed = check_eof
        && status != 101
        && matches!(
            tokio::time::timeout(Duration::from_secs(5), stream.read(&mut rest)).await,
            Ok(Ok(0)) | Ok(Err(_))
        );
    Ok(RawResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        closed,
    })
}

/// A WebSocket client written by hand: it never answers pings, so it can play the client
/// whose PONGs never come.
pub struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
    /// While reading, answer each ping with this text frame (never with a PONG).
    pub on_ping: Option<String>,
}

/// One frame as received.
#[derive(Debug)]
pub struct RawFrame {
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl RawWs {
    /// Performs the upgrade of `path` with `token`; panics unless 101. `rcvbuf` fixes the
    /// socket's receive buffer (which also stops the kernel from growing it), so a client
    /// that stops reading backs the server up after little data.
    pub async fn connect(addr: SocketAddr, path: &str, token: &str, rcvbuf: Option<u32>) -> RawWs {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        if let Some(size) = rcvbuf {
            socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
        }
        let mut stream = socket.connect(addr).await.expect("connect");
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             token: {token}\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .expect("send upgrade");
        let mut buf = Vec::new();
        let end = tokio::time::timeout(WAIT, async {
            loop {
                if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    return pos;
                }
                let mut chunk = [0u8; 1024];
                let n = stream.read(&mut chunk).await.expect("read upgrade");
                assert!(n > 0, "closed during the upgrade");
                buf.extend_from_slice(&chunk[..n]);
            }
        })
        .await
        .expect("upgrade response");
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        let buf = buf[end + 4..].to_vec();
        RawWs {
            stream,
            buf,
            on_ping: None,
        }
    }

    /// The next frame, or `None` at EOF (or a reset). Errors at `timeout`.
    pub async fn next_frame(&mut self, timeout: Duration) -> anyhow::Result<Option<RawFrame>> {
        tokio::time::timeout(timeout, self.read_frame())
            .await
            .with_context(|| format!("no frame within {timeout:?}"))?
    }

    async fn fill(&mut self, n: usize) -> anyhow::Result<bool> {
        while self.buf.len() < n {
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk).await {
                Ok(0) => return Ok(false),
                Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(true)
    }

    async fn read_frame(&mut self) -> anyhow::Result<Option<RawFrame>> {
        if !self.fill(2).await? {
            return Ok(None);
        }
        let opcode = self.buf[0] & 0x0f;
        let len7 = (self.buf[1] & 0x7f) as usize;
        let (header, len) = match len7 {
            126 => {
                if !self.fill(4).await? {
                    return Ok(None);
                }
                (4, u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize)
            }
            127 => {
                if !self.fill(10).await? {
                    return Ok(None);
                }
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.buf[2..10]);
                (10, u64::from_be_bytes(b) as usize)
            }
            n => (2, n),
        };
        if !self.fill(header + len).await? {
            return Ok(None);
        }
        let payload = self.buf[header..header + len].to_vec();
        self.buf.drain(..header + len);
        Ok(Some(RawFrame { opcode, payload }))
    }
}

/// What a [`RawWs`] saw until the server's Close (or the end of the connection).
#[derive(Debug, Default)]
pub struct RawEnd {
    /// The Close frame's code and reason; `None` if the connection ended without one.
    pub close: Option<(u16, String)>,
    /// Text frames before the end, in order.
    pub texts: Vec<String>,
    /// Pings before the end (never answered).
    pub pings: usize,
    /// Pings that carried a payload (D27: PINGs have an empty payload).
    pub nonempty_pings: usize,
}

impl RawWs {
    /// Reads until a Close frame or EOF, collecting text frames and counting pings. Errors
    /// when the connection is still open at `timeout`.
    pub async fn read_until_close(&mut self, timeout: Duration) -> anyhow::Result<RawEnd> {
        // One bound over several reads, each awaiting the next message: not a poll.
        let deadline = tokio::time::Instant::now() + timeout;
        let mut end = RawEnd::default();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(frame) = self.next_frame(left).await? else {
                return Ok(end);
            };
            match frame.opcode {
                0x1 => end
                    .texts
                    .push(String::from_utf8(frame.payload).context("text frame")?),
                0x8 => {
                    end.close = (frame.payload.len() >= 2).then(|| {
                        (
                            u16::from_be_bytes([frame.payload[0], frame.payload[1]]),
                            String::from_utf8_lossy(&frame.payload[2..]).into_owned(),
                        )
                    });
                    return Ok(end);
                }
                0x9 => {
                    end.pings += 1;
                    if !frame.payload.is_empty() {
                        end.nonempty_pings += 1;
                    }
                    if let Some(reply) = &self.on_ping {
                        let reply = reply.clone();
                        self.send_frame(0x1, reply.as_bytes(), true).await;
                    }
                }
                _ => {}
            }
        }
    }

    /// Sends one frame with FIN set, masked as a client must (or unmasked, a protocol error).
    pub async fn send_frame(&mut self, opcode: u8, payload: &[u8], masked: bool) {
        let mut out = vec![0x80 | opcode];
        let mask_bit = if masked { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(mask_bit | n as u8),
            n if n <= 0xffff => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            let key = [0x37u8, 0xfa, 0x21, 0x3d];
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            out.extend_from_slice(payload);
        }
        self.stream.write_all(&out).await.expect("send frame");
    }

    /// Whether the server ends the TCP connection within `timeout` (frames are skipped).
    pub async fn ends_within(&mut self, timeout: Duration) -> bool {
        // One bound over several reads, each awaiting the next message: not a poll.
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_frame(left).await {
                Ok(None) => return true,
                Ok(Some(_)) => {}
                Err(_) => return false,
            }
        }
    }
}
