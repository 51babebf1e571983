//! Clients for tests: a shared HTTP client and a small WebSocket client that turns a refused
//! upgrade into its status, headers and body, and reads frames under a timeout.

use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The shared HTTP client: no proxy (the machine's `HTTP_PROXY` must not catch loopback
/// requests), a 30 s request timeout, and no idle-connection pool.
///
/// Every `#[tokio::test]` has its own runtime, and a pooled connection belongs to the runtime
/// that opened it: reusing one from a finished test fails with "dispatch task is gone". So
/// nothing is pooled.
pub fn http() -> reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(30))
                .build()
                // Only fails if the TLS backend or resolver cannot initialise; there is no TLS.
                .unwrap_or_else(|e| panic!("building the test HTTP client: {e}"))
        })
        .clone()
}

/// Why a WebSocket connection was not established.
#[derive(Debug)]
pub enum WsConnectError {
    /// The server answered the upgrade request with a non-101 response.
    Refused {
        /// e.g. 401.
        status: StatusCode,
        /// The response headers.
        headers: HeaderMap,
        /// The body as far as it arrived with the headers (the whole body for small responses,
        /// which is what error responses are).
        body: String,
    },
    /// Anything else: bad URL, connection refused, I/O error, protocol error.
    Other(WsError),
}

impl WsConnectError {
    /// The refusal's status code, if the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            WsConnectError::Refused { status, .. } => Some(status.as_u16()),
            WsConnectError::Other(_) => None,
        }
    }

    /// The refusal's body, if the server answered.
    pub fn body(&self) -> Option<&str> {
        match self {
            WsConnectError::Refused { body, .. } => Some(body),
            WsConnectError::Other(_) => None,
        }
    }

    /// The refusal's body parsed as JSON; `None` if there is none or it is not JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        self.body().and_then(|b| serde_json::from_str(b).ok())
    }

    /// A refusal's header, as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        match self {
            WsConnectError::Refused { headers, .. } => {
                headers.get(name).and_then(|v| v.to_str().ok())
            }
            WsConnectError::Other(_) => None,
        }
    }
}

impl fmt::Display for WsConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WsConnectError::Refused { status, body, .. } => {
                write!(f, "upgrade refused with {status}: {body}")
            }
            WsConnectError::Other(e) => write!(f, "websocket connect failed: {e}"),
        }
    }
}

impl std::error::Error for WsConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WsConnectError::Refused { .. } => None,
            WsConnectError::Other(e) => Some(e),
        }
    }
}

/// A connected WebSocket client. Pings are answered automatically while reading.
pub struct WsClient {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    headers: HeaderMap,
}

impl WsClient {
    /// Connects to `url` (`ws://…`) with extra request headers (e.g. `("token", "…")`,
    /// `("Origin", "…")`). There is no limit on incoming message or frame size: server frames
    /// carrying media exceed 100 KB.
    pub async fn connect(url: &str, headers: &[(&str, &str)]) -> Result<WsClient, WsConnectError> {
        let mut request = url.into_client_request().map_err(WsConnectError::Other)?;
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| WsConnectError::Other(WsError::HttpFormat(e.into())))?;
            let value = HeaderValue::from_str(value)
                .map_err(|e| WsConnectError::Other(WsError::HttpFormat(e.into())))?;
            request.headers_mut().append(name, value);
        }
        let config = WebSocketConfig::default()
            .max_message_size(None)
            .max_frame_size(None);
        match tokio_tungstenite::connect_async_with_config(request, Some(config), true).await {
            Ok((stream, response)) => Ok(WsClient {
                stream,
                headers: response.headers().clone(),
            }),
            Err(WsError::Http(response)) => {
                let (parts, body) = (*response).into_parts();
                Err(WsConnectError::Refused {
                    status: parts.status,
                    headers: parts.headers,
                    body: String::from_utf8_lossy(&body.unwrap_or_default()).into_owned(),
                })
            }
            Err(e) => Err(WsConnectError::Other(e)),
        }
    }

    /// The headers of the server's 101 response.
    pub fn response_headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The next message of any kind, pings and pongs included.
    pub async fn next_message(&mut self, timeout: Duration) -> anyhow::Result<Message> {
        match tokio::time::timeout(timeout, self.stream.next()).await {
            Ok(Some(msg)) => msg.context("reading from the websocket"),
            Ok(None) => bail!("websocket stream ended"),
            Err(_) => bail!("no websocket message within {timeout:?}"),
        }
    }

    /// The next text frame, skipping pings and pongs. Errors on a binary frame, a close, or
    /// when nothing arrives within `timeout`.
    pub async fn next_text(&mut self, timeout: Duration) -> anyhow::Result<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let msg = self
                .next_message(left)
                .await
                .with_context(|| format!("waiting {timeout:?} for a text frame"))?;
            match msg {
                Message::Text(text) => return Ok(text.as_str().to_owned()),
                Message::Ping(_) | Message::Pong(_) => continue,
                Message::Close(frame) => bail!("expected a text frame, got close {frame:?}"),
                Message::Binary(b) => bail!("expected a text frame, got {} binary bytes", b.len()),
                Message::Frame(_) => continue,
            }
        }
    }

    /// The next text frame parsed as JSON (see [`WsClient::next_text`]).
    pub async fn next_json(&mut self, timeout: Duration) -> anyhow::Result<serde_json::Value> {
        let text = self.next_text(timeout).await?;
        serde_json::from_str(&text).with_context(|| format!("frame is not JSON: {text}"))
    }

    /// Reads until the server closes and returns its close code and reason; `None` if the
    /// connection ended without a close code (no close frame, or an empty one). Data frames
    /// before the close are skipped. Errors if the connection is still open at `timeout`.
    pub async fn expect_close(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<Option<(u16, String)>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let next = match tokio::time::timeout(left, self.stream.next()).await {
                Ok(next) => next,
                Err(_) => bail!("websocket not closed within {timeout:?}"),
            };
            match next {
                Some(Ok(Message::Close(frame))) => {
                    return Ok(frame.map(|f| (u16::from(f.code), f.reason.as_str().to_owned())));
                }
                Some(Ok(_)) => continue,
                None => return Ok(None),
                Some(Err(e)) if is_abrupt_close(&e) => return Ok(None),
                Some(Err(e)) => return Err(e).context("reading from the websocket"),
            }
        }
    }

    /// Sends a text frame.
    pub async fn send_text(&mut self, text: &str) -> anyhow::Result<()> {
        self.stream
            .send(Message::text(text))
            .await
            .context("sending a text frame")
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, data: &[u8]) -> anyhow::Result<()> {
        self.stream
            .send(Message::binary(data.to_vec()))
            .await
            .context("sending a binary frame")
    }

    /// Closes from the client side (code 1000) and waits up to 5 s for the server's close.
    pub async fn close(mut self) -> anyhow::Result<()> {
        self.stream
            .close(None)
            .await
            .context("sending the close frame")?;
        let drain = async {
            while let Some(msg) = self.stream.next().await {
                if msg.is_err() {
                    break;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), drain)
            .await
            .context("server did not finish the close handshake")
    }

    /// The underlying stream, for anything these helpers don't cover.
    pub fn stream(&mut self) -> &mut WebSocketStream<MaybeTlsStream<TcpStream>> {
        &mut self.stream
    }
}

/// Connection ends that mean "closed without a close frame" rather than a test failure.
fn is_abrupt_close(e: &WsError) -> bool {
    match e {
        WsError::ConnectionClosed | WsError::AlreadyClosed => true,
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => true,
        WsError::Io(io) => matches!(
            io.kind(),
            std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::UnexpectedEof
        ),
        _ => false,
    }
}
