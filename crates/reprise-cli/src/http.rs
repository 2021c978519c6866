//! A minimal HTTP/1.1 server side: reading request heads, writing responses, the built-in
//! responder that `reprise serve` runs without `--upstream`, and the metrics endpoint.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// The largest request head accepted.
const MAX_HEAD: usize = 16 * 1024;

/// A parsed request head.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    /// The method, as sent.
    pub method: String,
    /// The request target.
    pub path: String,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
    /// The length of the body that follows the head.
    pub content_length: usize,
}

/// Why a request could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the connection cleanly (for TLS: after close_notify) between requests.
    Closed,
    /// The request is malformed; answer 400 and close.
    Bad(&'static str),
    /// The connection failed; for TLS, `UnexpectedEof` means no close_notify.
    Io(io::Error),
}

/// Parses a request head (without the final blank line).
pub fn parse_head(head: &[u8]) -> Result<Request, &'static str> {
    let text = std::str::from_utf8(head).map_err(|_| "request head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().ok_or("empty request")?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(path), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("malformed request line");
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) || path.is_empty() {
        return Err("malformed request line");
    }
    let http11 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return Err("unsupported HTTP version"),
    };
    let mut keep_alive = http11;
    let mut content_length = 0usize;
    for line in lines {
        let (name, value) = line.split_once(':').ok_or("malformed header line")?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            content_length = value.parse().map_err(|_| "bad Content-Length")?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("chunked request bodies are not supported");
        }
    }
    Ok(Request {
        method: method.to_owned(),
        path: path.to_owned(),
        keep_alive,
        content_length,
    })
}

/// Reads one request head (and skips its body). `buf` carries bytes read past a request into
/// the next call.
pub async fn read_request<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> Result<Request, ReadError> {
    loop {
        if let Some(end) = find_head_end(buf) {
            let parsed = parse_head(&buf[..end]);
            buf.drain(..end + 4);
            let request = parsed.map_err(ReadError::Bad)?;
            skip_body(r, buf, request.content_length).await?;
            return Ok(request);
        }
        if buf.len() > MAX_HEAD {
            return Err(ReadError::Bad("request head too large"));
        }
        // Straight into the buffer's spare room: nothing to zero, nothing to copy.
        buf.reserve(4096);
        match r.read_buf(buf).await {
            Ok(0) => return Err(ReadError::Closed),
            Ok(_) => {}
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

async fn skip_body<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    len: usize,
) -> Result<(), ReadError> {
    let from_buf = len.min(buf.len());
    buf.drain(..from_buf);
    let mut left = len - from_buf;
    let mut chunk = [0u8; 4096];
    while left > 0 {
        let want = left.min(chunk.len());
        match r.read(&mut chunk[..want]).await {
            Ok(0) => return Err(ReadError::Closed),
            Ok(n) => left -= n,
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
    Ok(())
}

/// Writes a complete response.
pub async fn write_response<W: AsyncWrite + Unpin>(
    w: &mut W,
    status: &str,
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
    head_only: bool,
) -> io::Result<()> {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    w.write_all(&out).await?;
    w.flush().await
}

/// How a connection served by the responder ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The responder is done: the caller sends close_notify and closes.
    Close,
    /// The connection stayed idle past the idle timeout: the caller sends close_notify and
    /// closes.
    Idle,
    /// The server is shutting down: the caller sends close_notify and closes.
    Shutdown,
    /// The client sent close_notify between requests: the caller answers with its own and
    /// closes. Nothing more can come from the client, so nothing is left unread at the close.
    PeerClosed,
    /// A close_notify was received or sent.
    Clean,
    /// The connection ended without close_notify on either side.
    Unclean,
    /// A socket or TLS error other than an end of stream (a reset, a bad record): no
    /// close_notify either.
    Broken(io::ErrorKind),
}

impl Ending {
    /// Whether the connection ended without close_notify on either side.
    pub fn is_unclean(self) -> bool {
        matches!(self, Ending::Unclean | Ending::Broken(_))
    }
}

/// The built-in responder: answers every request with 200 and the text `body` makes (once, at
/// the first request: a connection that sends none costs nothing), keeping the connection open
/// as HTTP/1.1 allows, until the client closes, it idles past `idle`, or `shutdown`.
///
/// With `early` (early data enabled), the body ends with `early-data: yes` or `no`: whether
/// the request arrived (at least in part) in TLS 1.3 early data. Such a request is answered
/// only if its method is safe; any other gets `425 Too Early` (RFC 8470), and the client
/// sends it again after the handshake.
pub async fn respond<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    body: &(dyn Fn() -> String + Sync),
    idle: Duration,
    shutdown: &CancellationToken,
    early: Option<&crate::early::Rule<'_>>,
) -> Ending {
    let mut buf = Vec::new();
    let mut text: Option<String> = None;
    let mut tally = crate::early::Tally::new(stream);
    let stream = &mut tally;
    loop {
        // Where the next request starts in the stream: what was read, less what is buffered.
        let start = stream.read - buf.len() as u64;
        let read = tokio::select! {
            r = tokio::time::timeout(idle, read_request(stream, &mut buf)) => r,
            _ = shutdown.cancelled() => return Ending::Shutdown,
        };
        match read {
            // Idle: close it ourselves.
            Err(_) => return Ending::Idle,
            Ok(Err(ReadError::Closed)) => return Ending::PeerClosed,
            Ok(Err(ReadError::Io(e))) => {
                tracing::debug!(error = %e, "connection ended");
                return match e.kind() {
                    io::ErrorKind::UnexpectedEof => Ending::Unclean,
                    kind => Ending::Broken(kind),
                };
            }
            Ok(Err(ReadError::Bad(why))) => {
                let text = format!("bad request: {why}\n");
                if write_response(
                    stream,
                    "400 Bad Request",
                    "text/plain",
                    text.as_bytes(),
                    false,
                    false,
                )
                .await
                .is_err()
                {
                    return Ending::Unclean;
                }
                break;
            }
            Ok(Ok(request)) => {
                let head_only = request.method == "HEAD";
                let in_early = early.is_some_and(|e| e.arrived_early(start));
                let sent = match early {
                    Some(rule) if in_early && !rule.is_safe(&request.method) => {
                        rule.metrics.too_early();
                        write_response(
                            stream,
                            "425 Too Early",
                            "text/plain; charset=utf-8",
                            b"too early: send the request again after the handshake\n",
                            request.keep_alive,
                            head_only,
                        )
                        .await
                    }
                    _ => {
                        let body: &str = text.get_or_insert_with(body);
                        // With early data on, the body says whether this request came in it.
                        let body = match early {
                            Some(_) => {
                                let yes = if in_early { "yes" } else { "no" };
                                std::borrow::Cow::Owned(format!("{body}early-data: {yes}\n"))
                            }
                            None => std::borrow::Cow::Borrowed(body),
                        };
                        write_response(
                            stream,
                            "200 OK",
                            "text/plain; charset=utf-8",
                            body.as_bytes(),
                            request.keep_alive,
                            head_only,
                        )
                        .await
                    }
                };
                if sent.is_err() {
                    return Ending::Unclean;
                }
                if !request.keep_alive {
                    break;
                }
            }
        }
    }
    // The caller sends close_notify, which makes the ending clean as OpenSSL's SSL_shutdown
    // does, and closes the connection.
    Ending::Close
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keep_alive_rules() {
        let r = parse_head(b"GET / HTTP/1.1\r\nHost: x").map(|r| r.keep_alive);
        assert_eq!(r, Ok(true));
        let r = parse_head(b"GET / HTTP/1.1\r\nConnection: close").map(|r| r.keep_alive);
        assert_eq!(r, Ok(false));
        let r = parse_head(b"GET / HTTP/1.0").map(|r| r.keep_alive);
        assert_eq!(r, Ok(false));
        let r = parse_head(b"GET / HTTP/1.0\r\nConnection: Keep-Alive").map(|r| r.keep_alive);
        assert_eq!(r, Ok(true));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            &b""[..],
            b"\x16\x03\x01",
            b"GET /",
            b"GET / HTTP/2",
            b"get / HTTP/1.1",
            b"GET / HTTP/1.1\r\nNoColon",
        ] {
            assert!(parse_head(bad).is_err(), "{bad:?}");
        }
        assert!(parse_head(b"POST / HTTP/1.1\r\nContent-Length: x").is_err());
        assert!(parse_head(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked").is_err());
    }

    #[tokio::test]
    async fn reads_pipelined_requests_and_skips_bodies() {
        let data =
            b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\n\r\n".to_vec();
        let mut reader = &data[..];
        let mut buf = Vec::new();
        let first = read_request(&mut reader, &mut buf).await;
        assert!(matches!(first, Ok(Request { ref path, .. }) if path == "/a"));
        let second = read_request(&mut reader, &mut buf).await;
        assert!(matches!(second, Ok(Request { ref path, .. }) if path == "/b"));
        assert!(matches!(
            read_request(&mut reader, &mut buf).await,
            Err(ReadError::Closed)
        ));
    }
}
