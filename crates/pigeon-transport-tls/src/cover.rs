//! The cover site: what everyone without a tunnel token sees.
//!
//! Either static files from a directory, served the way a stock nginx serves them (its headers,
//! its error pages), or another web server. In the second case each connection is passed to that
//! server as it arrived — HTTP/1.1 to its HTTP/1.1 port, HTTP/2 to its cleartext HTTP/2 port —
//! including the bytes the front read while deciding, so every answer, error and timeout is that
//! server's own. When the other server has no cleartext HTTP/2 port, HTTP/2 connections are
//! translated to HTTP/1.1 requests (with the original `Host`).

use std::convert::Infallible;
use std::future::Future as _;
use std::io;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};

/// Largest file the static cover serves.
const MAX_FILE: u64 = 64 << 20;
/// A cover connection on which nothing moves either way for this long is closed: nginx's
/// `keepalive_timeout` (75 s) for an idle keep-alive connection; its `client_body_timeout` and
/// `send_timeout` (60 s) are gaps within a request, which this bounds as well.
pub(crate) const COVER_IDLE: std::time::Duration = std::time::Duration::from_secs(75);
/// A request's header must be complete within this long (nginx's `client_header_timeout`).
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// What everyone without a token sees.
#[derive(Clone, Debug)]
pub enum Cover {
    /// Static files from a directory (`index.html` for directories).
    Dir(PathBuf),
    /// Another web server, reached in cleartext: its HTTP/1.1 address, and its HTTP/2 (h2c)
    /// address if it has one.
    Upstream {
        /// Where HTTP/1.1 connections go.
        http1: SocketAddr,
        /// Where HTTP/2 connections go, as they are (prior-knowledge h2c).
        h2c: Option<SocketAddr>,
    },
}

impl Cover {
    /// Serves one connection whose first bytes, already read, are `prefix`.
    pub(crate) async fn serve<S>(&self, io: S, prefix: Vec<u8>, h2: bool)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        match self {
            Self::Dir(dir) => {
                let dir = dir.clone();
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let dir = dir.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        // As nginx does, the request body is read (and dropped) before the
                        // answer, so the stream ends as the client expects.
                        discard(body).await;
                        Ok::<_, Infallible>(static_file(&dir, &parts).await)
                    }
                });
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT);
                // At most 128 streams at once on one connection (nginx's
                // `http2_max_concurrent_streams`).
                builder.http2().max_concurrent_streams(128);
                let io = Idle::new(Prefixed { prefix, at: 0, io }, COVER_IDLE);
                let _ = builder.serve_connection(TokioIo::new(io), service).await;
            }
            // The other server's own timeouts apply: the connection is passed as it is.
            Self::Upstream { http1, h2c } => match (h2, h2c) {
                (true, Some(h2c)) => splice(prefix, io, *h2c).await,
                (true, None) => {
                    let io = Idle::new(Prefixed { prefix, at: 0, io }, COVER_IDLE);
                    translate(io, *http1).await;
                }
                (false, _) => splice(prefix, io, *http1).await,
            },
        }
    }
}

/// Passes a connection whose first bytes, already read, are `prefix` to `upstream` as it came.
pub(crate) async fn pass_through(io: tokio::net::TcpStream, prefix: Vec<u8>, upstream: SocketAddr) {
    splice(prefix, io, upstream).await;
}

/// nginx's answer to bytes that are not TLS on its HTTPS port, once `head` says enough: the
/// "plain HTTP request was sent to HTTPS port" page for an HTTP request, a plain 400 for
/// anything else; `None` while more bytes could still make a request line.
pub(crate) fn plain_http_on_https(head: &[u8]) -> Option<Vec<u8>> {
    let is_token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    let method_end = head.iter().position(|&b| !is_token(b));
    let plain_http = match method_end {
        None => return None,
        Some(0) => false,
        Some(at) if head[at] != b' ' => false,
        Some(_) => {
            let line_end = head.windows(2).position(|w| w == b"\r\n")?;
            let line = &head[..line_end];
            if !line.split(|&b| b == b' ').any(|p| p.starts_with(b"HTTP/")) {
                false
            } else if head.windows(4).any(|w| w == b"\r\n\r\n") {
                true
            } else {
                return None;
            }
        }
    };
    let (title, extra) = if plain_http {
        (
            "400 The plain HTTP request was sent to HTTPS port",
            "<center>The plain HTTP request was sent to HTTPS port</center>\r\n",
        )
    } else {
        ("400 Bad Request", "")
    };
    let body = format!(
        "<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n{extra}<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    );
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    let mut out = format!(
        "HTTP/1.1 400 Bad Request\r\nServer: nginx\r\nDate: {date}\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    Some(out)
}

/// Passes a connection to `upstream` byte for byte.
async fn splice<S: AsyncRead + AsyncWrite + Unpin>(
    prefix: Vec<u8>,
    mut io: S,
    upstream: SocketAddr,
) {
    let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await else {
        return;
    };
    let _ = up.set_nodelay(true);
    if up.write_all(&prefix).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut io, &mut up).await;
}

/// Serves HTTP/2 by forwarding each request to an HTTP/1.1 server.
async fn translate<S>(io: S, upstream: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let client = client.clone();
        async move {
            let (mut parts, body) = req.into_parts();
            let authority = parts
                .uri
                .authority()
                .map(|a| a.as_str().to_owned())
                .or_else(|| {
                    parts
                        .headers
                        .get(header::HOST)
                        .and_then(|h| h.to_str().ok())
                        .map(str::to_owned)
                });
            let path = parts
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned();
            let Ok(uri) = format!("http://{upstream}{path}").parse() else {
                return Ok::<_, Infallible>(plain_status(StatusCode::BAD_REQUEST));
            };
            parts.uri = uri;
            parts.version = http::Version::HTTP_11;
            if let Some(host) = authority.and_then(|a| HeaderValue::from_str(&a).ok()) {
                parts.headers.insert(header::HOST, host);
            }
            match client.request(Request::from_parts(parts, body)).await {
                Ok(resp) => {
                    let (mut parts, body) = resp.into_parts();
                    for hop in ["connection", "keep-alive", "transfer-encoding", "upgrade"] {
                        parts.headers.remove(hop);
                    }
                    Ok(Response::from_parts(
                        parts,
                        body.map_err(|e| io::Error::other(e.to_string())).boxed(),
                    ))
                }
                Err(_) => Ok(plain_status(StatusCode::BAD_GATEWAY)),
            }
        }
    });
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), service)
        .await;
}

type Body = BoxBody<Bytes, io::Error>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// The reason phrase nginx gives a status (it differs from the canonical one for 405).
fn nginx_reason(status: StatusCode) -> &'static str {
    match status.as_u16() {
        405 => "Not Allowed",
        _ => status.canonical_reason().unwrap_or("Error"),
    }
}

/// nginx's own page for an error status.
fn nginx_page(status: StatusCode) -> String {
    let line = format!("{} {}", status.as_u16(), nginx_reason(status));
    format!(
        "<html>\r\n<head><title>{line}</title></head>\r\n<body>\r\n<center><h1>{line}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    )
}

fn plain_status(status: StatusCode) -> Response<Body> {
    let page = nginx_page(status);
    let mut resp = Response::new(full(page.clone()));
    *resp.status_mut() = status;
    resp.extensions_mut()
        .insert(hyper::ext::ReasonPhrase::from_static(
            nginx_reason(status).as_bytes(),
        ));
    let h = resp.headers_mut();
    h.insert(header::SERVER, HeaderValue::from_static("nginx"));
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(page.len()));
    resp
}

fn content_type(path: &Path) -> &'static str {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("html" | "htm") => "text/html",
        Some("css") => "text/css",
        Some("js") => "application/javascript",
        Some("json") => "application/json",
        Some("txt") => "text/plain",
        Some("xml") => "text/xml",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("ico") => "image/x-icon",
        Some("webp") => "image/webp",
        Some("woff") => "font/woff",
        Some("woff2") => "font/woff2",
        Some("pdf") => "application/pdf",
        _ => "application/octet-stream",
    }
}

/// The file under `root` that `uri_path` names, if the path is clean.
fn resolve(root: &Path, uri_path: &str) -> Option<PathBuf> {
    let decoded = percent_decode(uri_path)?;
    let mut path = root.to_path_buf();
    for component in Path::new(&decoded).components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => path.push(part),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(path)
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let s = String::from_utf8(out).ok()?;
    (!s.contains('\0') && !s.contains('\\')).then_some(s)
}

/// Reads and drops a request body: at most 1 MiB, for at most 10 s.
async fn discard(mut body: Incoming) {
    use http_body_util::BodyExt as _;
    let read = async {
        let mut total = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            total += frame.data_ref().map_or(0, Bytes::len);
            if total > 1 << 20 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), read).await;
}

/// A static file as nginx serves one: GET and HEAD; POST finds the file and is then refused
/// (405), a missing file is 404 whatever the method; other methods are 405 at once.
async fn static_file(root: &Path, req: &http::request::Parts) -> Response<Body> {
    let method = &req.method;
    if method != Method::GET && method != Method::HEAD && method != Method::POST {
        return plain_status(StatusCode::METHOD_NOT_ALLOWED);
    }
    let uri_path = req.uri.path();
    let Some(mut path) = resolve(root, uri_path) else {
        return plain_status(StatusCode::BAD_REQUEST);
    };
    let mut meta = tokio::fs::metadata(&path).await.ok();
    if meta.as_ref().is_some_and(std::fs::Metadata::is_dir) {
        if !uri_path.ends_with('/') {
            let mut resp = plain_status(StatusCode::MOVED_PERMANENTLY);
            if let Ok(location) = HeaderValue::from_str(&format!("{uri_path}/")) {
                resp.headers_mut().insert(header::LOCATION, location);
            }
            return resp;
        }
        path.push("index.html");
        meta = tokio::fs::metadata(&path).await.ok();
    }
    let Some(meta) = meta.filter(|m| m.is_file() && m.len() <= MAX_FILE) else {
        let missing = root.join("404.html");
        if let Ok(page) = tokio::fs::read(&missing).await {
            let mut resp = Response::new(full(page.clone()));
            *resp.status_mut() = StatusCode::NOT_FOUND;
            let h = resp.headers_mut();
            h.insert(header::SERVER, HeaderValue::from_static("nginx"));
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(page.len()));
            return resp;
        }
        return plain_status(StatusCode::NOT_FOUND);
    };
    if method == Method::POST {
        return plain_status(StatusCode::METHOD_NOT_ALLOWED);
    }
    let Ok(bytes) = tokio::fs::read(&path).await else {
        return plain_status(StatusCode::FORBIDDEN);
    };
    let modified = meta.modified().ok();
    let len = bytes.len();
    let body = if method == Method::HEAD {
        full(Bytes::new())
    } else {
        full(bytes)
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(header::SERVER, HeaderValue::from_static("nginx"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(&path)),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Some(modified) = modified {
        if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(modified)) {
            h.insert(header::LAST_MODIFIED, v);
        }
        let secs = modified
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if let Ok(v) = HeaderValue::from_str(&format!("\"{secs:x}-{len:x}\"")) {
            h.insert(header::ETAG, v);
        }
    }
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    resp
}

/// A stream whose first bytes were already read; they are read again first.
pub(crate) struct Prefixed<S> {
    prefix: Vec<u8>,
    at: usize,
    io: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.at);
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            if this.at == this.prefix.len() {
                this.prefix = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A stream that fails with `TimedOut` once nothing has moved either way for `limit`: an idle
/// keep-alive connection, a request body or header that stopped coming, a peer that stopped
/// reading its answer.
pub(crate) struct Idle<S> {
    io: S,
    limit: std::time::Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl<S> Idle<S> {
    pub(crate) fn new(io: S, limit: std::time::Duration) -> Self {
        Self {
            io,
            limit,
            timer: Box::pin(tokio::time::sleep(limit)),
        }
    }

    fn moved(&mut self) {
        let next = tokio::time::Instant::now() + self.limit;
        self.timer.as_mut().reset(next);
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.timer.as_mut().poll(cx).is_ready()
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "the connection was idle too long")
}

impl<S: AsyncRead + Unpin> AsyncRead for Idle<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.moved();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(timed_out())),
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Idle<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    this.moved();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(timed_out())),
            other => other,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_flush(cx) {
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(timed_out())),
            other => other,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_root() {
        let root = Path::new("/srv/site");
        assert_eq!(resolve(root, "/a/b.html"), Some(root.join("a/b.html")));
        assert_eq!(resolve(root, "/a%20b"), Some(root.join("a b")));
        assert_eq!(resolve(root, "/"), Some(root.to_path_buf()));
        for bad in [
            "/../etc/passwd",
            "/a/%2e%2e/%2e%2e/x",
            "/%00",
            "/a%5c..",
            "/%zz",
        ] {
            assert_eq!(resolve(root, bad), None, "{bad}");
        }
    }

    #[test]
    fn plain_http_and_garbage_on_the_https_port() {
        let http = plain_http_on_https(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n").expect("answer");
        let text = String::from_utf8(http).expect("utf-8");
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        assert!(text.contains("The plain HTTP request was sent to HTTPS port"));
        assert_eq!(plain_http_on_https(b"GET /x HTTP/1.1\r\nHost: a\r\n"), None);
        assert_eq!(
            plain_http_on_https(b"AAAAAAAA"),
            None,
            "could still be a method"
        );
        let garbage = plain_http_on_https(&[0x41, 0x01, 0x02]).expect("answer");
        assert!(!String::from_utf8_lossy(&garbage).contains("plain HTTP"));
    }

    #[test]
    fn error_pages_are_nginx_s() {
        assert_eq!(
            nginx_page(StatusCode::NOT_FOUND),
            "<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n<center><h1>404 Not Found</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_times_out_and_a_busy_one_does_not() {
        use tokio::io::AsyncReadExt as _;
        let (a, mut b) = tokio::io::duplex(64);
        let mut idle = Idle::new(a, std::time::Duration::from_secs(75));
        // Bytes every minute keep it open...
        for _ in 0..3 {
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
            b.write_all(b"x").await.expect("write");
            let mut one = [0u8; 1];
            idle.read_exact(&mut one).await.expect("read");
        }
        // ...silence for 75 s ends it.
        let mut one = [0u8; 1];
        let err = idle.read(&mut one).await.expect_err("timed out");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
