//! HTTP/2 fingerprints: what a client's connection preface and requests say about it.
//!
//! JA4 describes a ClientHello; whoever terminates the TLS (a CDN, a reverse proxy) also sees
//! the HTTP/2 a client speaks, and the common fingerprint of it (after Akamai's 2017 paper) is
//! `SETTINGS|WINDOW_UPDATE|PRIORITY frames|pseudo-header order`, e.g. Chrome's
//! `1:65536;2:0;4:6291456;6:262144|15663105|0|m,a,s,p`. Header order and the priority a
//! HEADERS frame carries tell clients apart too. [`parse`] reads all that from the client's
//! side of a decrypted connection; [`FingerprintServer`] is an HTTPS server on loopback that
//! records what clients send it (serving a page, and answering POSTs) so tests can set a
//! browser's fingerprint beside Pigeonpost's.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One request's headers as the client sent them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestFp {
    /// `:method`.
    pub method: String,
    /// `:path`.
    pub path: String,
    /// The HEADERS frame's flags.
    pub flags: u8,
    /// The priority it carried: exclusive, stream depended on, weight (1–256).
    pub priority: Option<(bool, u32, u16)>,
    /// Pseudo-headers in order, first letters: `m,a,s,p`.
    pub pseudo: String,
    /// Regular header names in order.
    pub headers: Vec<String>,
}

/// A client's HTTP/2 fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct H2Fingerprint {
    /// The first SETTINGS frame's parameters, in order.
    pub settings: Vec<(u16, u32)>,
    /// The connection WINDOW_UPDATE increment sent before the first request, if any.
    pub window_update: Option<u32>,
    /// PRIORITY frames before the first request: (stream, exclusive, depends on, weight).
    pub priority_frames: Vec<(u32, bool, u32, u16)>,
    /// Requests, in order.
    pub requests: Vec<RequestFp>,
}

impl H2Fingerprint {
    /// The Akamai-style string: `SETTINGS|WINDOW_UPDATE|PRIORITY|pseudo-headers`.
    pub fn akamai(&self) -> String {
        let settings = self
            .settings
            .iter()
            .map(|(id, v)| format!("{id}:{v}"))
            .collect::<Vec<_>>()
            .join(";");
        let window = self.window_update.map_or("00".into(), |w| w.to_string());
        let priority = if self.priority_frames.is_empty() {
            "0".to_owned()
        } else {
            self.priority_frames
                .iter()
                .map(|(s, e, d, w)| format!("{s}:{}:{d}:{w}", u8::from(*e)))
                .collect::<Vec<_>>()
                .join(",")
        };
        let pseudo = self.requests.first().map_or("", |r| r.pseudo.as_str());
        format!("{settings}|{window}|{priority}|{pseudo}")
    }
}

/// Reads the fingerprint from the client's side of a decrypted HTTP/2 connection.
///
/// # Errors
/// A description of what does not parse.
pub fn parse(plain: &[u8]) -> Result<H2Fingerprint, String> {
    let mut rest = plain
        .strip_prefix(PREFACE)
        .ok_or("no HTTP/2 connection preface")?;
    let mut fp = H2Fingerprint::default();
    let mut decoder = loona_hpack::Decoder::new();
    let mut pending: Pending = None;
    let mut first_settings = true;
    while rest.len() >= 9 {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        let (kind, flags) = (rest[3], rest[4]);
        let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]) & 0x7fff_ffff;
        let Some(payload) = rest.get(9..9 + len) else {
            break;
        };
        rest = &rest[9 + len..];
        let before_request = fp.requests.is_empty() && pending.is_none();
        match kind {
            4 if flags & 1 == 0 && first_settings => {
                first_settings = false;
                fp.settings = payload
                    .chunks_exact(6)
                    .map(|c| {
                        (
                            u16::from_be_bytes([c[0], c[1]]),
                            u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                        )
                    })
                    .collect();
            }
            8 if stream == 0 && before_request && fp.window_update.is_none() => {
                let inc = payload
                    .get(..4)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff);
                fp.window_update = inc;
            }
            2 if before_request => {
                if let Some((e, d, w)) = priority(payload) {
                    fp.priority_frames.push((stream, e, d, w));
                }
            }
            1 => {
                let mut body = payload;
                if flags & 0x8 != 0 {
                    let pad = usize::from(*body.first().ok_or("empty padded HEADERS")?);
                    body = body
                        .get(1..body.len().saturating_sub(pad))
                        .ok_or("bad padding")?;
                }
                let mut prio = None;
                if flags & 0x20 != 0 {
                    prio = priority(body);
                    body = body.get(5..).ok_or("short HEADERS priority")?;
                }
                pending = Some((flags, prio, body.to_vec()));
                if flags & 0x4 != 0 {
                    finish(&mut decoder, &mut pending, &mut fp)?;
                }
            }
            9 => {
                if let Some((_, _, block)) = pending.as_mut() {
                    block.extend_from_slice(payload);
                }
                if flags & 0x4 != 0 {
                    finish(&mut decoder, &mut pending, &mut fp)?;
                }
            }
            _ => {}
        }
    }
    Ok(fp)
}

fn priority(b: &[u8]) -> Option<(bool, u32, u16)> {
    let dep = u32::from_be_bytes(b.get(..4)?.try_into().ok()?);
    Some((
        dep & 0x8000_0000 != 0,
        dep & 0x7fff_ffff,
        u16::from(*b.get(4)?) + 1,
    ))
}

/// A header block being assembled: HEADERS flags, its priority, the block so far.
type Pending = Option<(u8, Option<(bool, u32, u16)>, Vec<u8>)>;

/// Each connection's recorded client bytes.
type Recordings = Arc<Mutex<Vec<Arc<Mutex<Vec<u8>>>>>>;

fn finish(
    decoder: &mut loona_hpack::Decoder<'_>,
    pending: &mut Pending,
    fp: &mut H2Fingerprint,
) -> Result<(), String> {
    let Some((flags, priority, block)) = pending.take() else {
        return Ok(());
    };
    let headers = decoder
        .decode(&block)
        .map_err(|e| format!("HPACK: {e:?}"))?;
    let mut req = RequestFp {
        method: String::new(),
        path: String::new(),
        flags,
        priority,
        pseudo: String::new(),
        headers: Vec::new(),
    };
    let mut pseudo = Vec::new();
    for (name, value) in headers {
        let name = String::from_utf8_lossy(&name).into_owned();
        let value = String::from_utf8_lossy(&value).into_owned();
        match name.strip_prefix(':') {
            Some(p) => {
                pseudo.push(p.chars().next().map(String::from).unwrap_or_default());
                if p == "method" {
                    req.method = value;
                } else if p == "path" {
                    req.path = value;
                }
            }
            None => req.headers.push(name),
        }
    }
    req.pseudo = pseudo.join(",");
    fp.requests.push(req);
    Ok(())
}

/// Records everything read through it.
struct Recording<S> {
    inner: S,
    log: Arc<Mutex<Vec<u8>>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Recording<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Ok(mut log) = this.log.lock()
            && log.len() < 1 << 20
        {
            log.extend_from_slice(&buf.filled()[before..]);
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Recording<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// An HTTPS server on loopback that records each connection's decrypted client bytes. It serves
/// `page` at every GET and answers every POST with `ok` after reading its body.
pub struct FingerprintServer {
    addr: SocketAddr,
    connections: Recordings,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FingerprintServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FingerprintServer {
    /// Starts the server on a free loopback port with `chain`/`key` as its certificate.
    ///
    /// # Errors
    /// If the certificate does not fit the key or the port cannot be bound.
    pub async fn start(
        chain: Vec<rustls::pki_types::CertificateDer<'static>>,
        key: rustls::pki_types::PrivateKeyDer<'static>,
        page: &'static str,
    ) -> anyhow::Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let connections: Recordings = Arc::default();
        let conns = Arc::clone(&connections);
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let log = Arc::new(Mutex::new(Vec::new()));
                if let Ok(mut c) = conns.lock() {
                    c.push(Arc::clone(&log));
                }
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let io = hyper_util::rt::TokioIo::new(Recording { inner: tls, log });
                    let service = hyper::service::service_fn(
                        |req: hyper::Request<hyper::body::Incoming>| async move {
                            use http_body_util::BodyExt as _;
                            let post = req.method() == hyper::Method::POST;
                            let _ = req.into_body().collect().await;
                            let body = if post { "ok" } else { page };
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from_static(
                                    body.as_bytes(),
                                )),
                            ))
                        },
                    );
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(io, service)
                    .await;
                });
            }
        });
        Ok(Self {
            addr,
            connections,
            task,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What each connection's client sent so far, in the order they came.
    pub fn recorded(&self) -> Vec<Vec<u8>> {
        self.connections
            .lock()
            .map(|c| {
                c.iter()
                    .map(|l| l.lock().map(|v| v.clone()).unwrap_or_default())
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_chrome_like_preface() {
        let mut wire = PREFACE.to_vec();
        let settings: Vec<u8> = [(1u16, 65_536u32), (2, 0), (4, 6_291_456), (6, 262_144)]
            .iter()
            .flat_map(|(id, v)| id.to_be_bytes().into_iter().chain(v.to_be_bytes()))
            .collect();
        let frame = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
            let len = u32::try_from(payload.len()).expect("small").to_be_bytes();
            let mut f = vec![len[1], len[2], len[3], kind, flags];
            f.extend_from_slice(&stream.to_be_bytes());
            f.extend_from_slice(payload);
            f
        };
        wire.extend(frame(4, 0, 0, &settings));
        wire.extend(frame(8, 0, 0, &15_663_105u32.to_be_bytes()));
        let block = loona_hpack::Encoder::new().encode([
            (&b":method"[..], &b"GET"[..]),
            (b":authority", b"cover.test"),
            (b":scheme", b"https"),
            (b":path", b"/"),
            (b"user-agent", b"x"),
        ]);
        let mut headers = vec![0x80, 0, 0, 0, 255];
        headers.extend_from_slice(&block);
        wire.extend(frame(1, 0x25, 1, &headers));
        let fp = parse(&wire).expect("parses");
        assert_eq!(
            fp.akamai(),
            "1:65536;2:0;4:6291456;6:262144|15663105|0|m,a,s,p"
        );
        assert_eq!(fp.requests[0].priority, Some((true, 0, 256)));
        assert_eq!(fp.requests[0].headers, vec!["user-agent"]);
        assert!(parse(b"GET / HTTP/1.1\r\n").is_err());
    }
}
