//! The relay's port 80: what a real HTTPS site has there.
//!
//! While an order is open it answers the CA's HTTP-01 request
//! (`/.well-known/acme-challenge/<token>`, RFC 8555 §8.3). Everything else gets a 301 to the
//! same path on `https://DOMAIN`, as nginx's usual `return 301 https://$host$request_uri;`
//! does, with nginx's headers and pages. The domain is the configured one, not the request's
//! `Host`, so the listener never redirects anywhere else.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

/// Where HTTP-01 answers live.
const PREFIX: &str = "/.well-known/acme-challenge/";
/// Most connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 256;
/// Time a client has to send its request headers.
const HEADER_TIME: Duration = Duration::from_secs(10);
/// Longest a connection is kept.
const CONNECTION_TIME: Duration = Duration::from_secs(60);

/// The open challenges: token → key authorization.
#[derive(Default)]
pub(crate) struct Challenges {
    tokens: Mutex<BTreeMap<String, String>>,
}

impl std::fmt::Debug for Challenges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Challenges").finish_non_exhaustive()
    }
}

impl Challenges {
    /// Answers `token` with `key_authorization` until [`Challenges::clear`].
    pub(crate) fn insert(&self, token: &str, key_authorization: &str) {
        self.lock()
            .insert(token.to_owned(), key_authorization.to_owned());
    }

    /// Forgets every challenge (the order is over).
    pub(crate) fn clear(&self) {
        self.lock().clear();
    }

    fn get(&self, token: &str) -> Option<String> {
        self.lock().get(token).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        // No code panics while holding the lock, so a poisoned map is still whole.
        self.tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What a request gets.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// The key authorization of an open challenge.
    Challenge(String),
    /// An unknown challenge token.
    NotFound,
    /// Everything else: to this `https://` URL.
    Redirect(String),
}

/// The answer to `method path_and_query`, with `base` the site's `https://DOMAIN[:PORT]`.
fn answer(method: &Method, path_and_query: &str, challenges: &Challenges, base: &str) -> Answer {
    if let Some(rest) = path_and_query.strip_prefix(PREFIX) {
        let token = rest.split(['?', '#']).next().unwrap_or_default();
        return match challenges.get(token) {
            Some(key_authorization) if method == Method::GET || method == Method::HEAD => {
                Answer::Challenge(key_authorization)
            }
            _ => Answer::NotFound,
        };
    }
    let path = if path_and_query.starts_with('/') {
        path_and_query
    } else {
        "/"
    };
    Answer::Redirect(format!("{base}{path}"))
}

/// nginx's page for `status`.
fn nginx_page(status: StatusCode) -> String {
    let title = format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or_default()
    );
    format!(
        "<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    )
}

fn respond(answer: Answer) -> Response<Full<Bytes>> {
    let (status, body, content_type, location) = match answer {
        Answer::Challenge(key_authorization) => (
            StatusCode::OK,
            key_authorization,
            "application/octet-stream",
            None,
        ),
        Answer::NotFound => (
            StatusCode::NOT_FOUND,
            nginx_page(StatusCode::NOT_FOUND),
            "text/html",
            None,
        ),
        Answer::Redirect(url) => match HeaderValue::from_str(&url) {
            Ok(location) => (
                StatusCode::MOVED_PERMANENTLY,
                nginx_page(StatusCode::MOVED_PERMANENTLY),
                "text/html",
                Some(location),
            ),
            // A path hyper took is always a valid header value; if not, nothing is echoed.
            Err(_) => (
                StatusCode::BAD_REQUEST,
                nginx_page(StatusCode::BAD_REQUEST),
                "text/html",
                None,
            ),
        },
    };
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    let length = body.len();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    // nginx's headers, in nginx's order.
    let headers = resp.headers_mut();
    headers.insert(header::SERVER, HeaderValue::from_static("nginx"));
    if let Ok(date) = HeaderValue::from_str(&date) {
        headers.insert(header::DATE, date);
    }
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    if let Some(location) = location {
        headers.insert(header::LOCATION, location);
    }
    resp
}

/// Serves `listener` until the task is aborted.
pub(super) async fn serve(listener: TcpListener, challenges: Arc<Challenges>, base: String) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let base: Arc<str> = base.into();
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _peer)) => tcp,
            Err(e) => {
                tracing::debug!(error = %e, "accept on the ACME HTTP listener failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            continue;
        };
        let challenges = Arc::clone(&challenges);
        let base = Arc::clone(&base);
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
                let resp = respond(answer(req.method(), path, &challenges, &base));
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .title_case_headers(true)
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIME)
                .serve_connection(TokioIo::new(tcp), service);
            let _ = tokio::time::timeout(CONNECTION_TIME, conn).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    const BASE: &str = "https://relay.example.org";

    #[test]
    fn challenges_are_answered_and_the_rest_redirected() {
        let c = Challenges::default();
        c.insert("tok-1", "tok-1.thumb");
        let get = Method::GET;
        assert_eq!(
            answer(&get, "/.well-known/acme-challenge/tok-1", &c, BASE),
            Answer::Challenge("tok-1.thumb".into())
        );
        assert_eq!(
            answer(
                &Method::HEAD,
                "/.well-known/acme-challenge/tok-1?x",
                &c,
                BASE
            ),
            Answer::Challenge("tok-1.thumb".into())
        );
        assert_eq!(
            answer(&Method::POST, "/.well-known/acme-challenge/tok-1", &c, BASE),
            Answer::NotFound
        );
        assert_eq!(
            answer(&get, "/.well-known/acme-challenge/other", &c, BASE),
            Answer::NotFound
        );
        assert_eq!(
            answer(&get, "/a/b?c=d", &c, BASE),
            Answer::Redirect("https://relay.example.org/a/b?c=d".into())
        );
        assert_eq!(
            answer(&Method::POST, "*", &c, BASE),
            Answer::Redirect("https://relay.example.org/".into())
        );
        c.clear();
        assert_eq!(
            answer(&get, "/.well-known/acme-challenge/tok-1", &c, BASE),
            Answer::NotFound
        );
    }

    async fn request(port: u16, text: &str) -> String {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        tcp.write_all(text.as_bytes()).await.expect("write");
        let mut out = String::new();
        tcp.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn the_listener_speaks_http() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let c = Arc::new(Challenges::default());
        c.insert("abc", "abc.xyz");
        let task = tokio::spawn(serve(listener, Arc::clone(&c), BASE.to_owned()));

        let got = request(
            port,
            "GET /blog/post?id=3 HTTP/1.1\r\nHost: anything.example\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(
            got.starts_with("HTTP/1.1 301 Moved Permanently\r\n"),
            "{got}"
        );
        assert!(
            got.contains("\r\nLocation: https://relay.example.org/blog/post?id=3\r\n"),
            "{got}"
        );
        assert!(got.contains("\r\nServer: nginx\r\nDate: "), "{got}");
        assert!(got.contains("<center>nginx</center>"), "{got}");

        let got = request(
            port,
            "GET /.well-known/acme-challenge/abc HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
        assert!(got.ends_with("\r\n\r\nabc.xyz"), "{got}");

        let got = request(port, "garbage\r\n\r\n").await;
        assert!(got.starts_with("HTTP/1.1 400"), "{got}");
        task.abort();
    }
}
