//! `pigeon app`: the web client, served on loopback (issue #17, first part).
//!
//! The page talks to the same JSON-RPC core as `pigeon rpc` ([`crate::rpc_cmd`]) over a
//! WebSocket. What keeps it safe on a machine where other people's web pages also run:
//! - it listens on a loopback address only;
//! - every request must name this server in `Host` (a page from elsewhere that rebinds its DNS
//!   name to 127.0.0.1 sends its own name and is refused), and the WebSocket must come from this
//!   server's own `Origin` (no cross-site requests);
//! - the printed URL carries a one-time secret that becomes an HttpOnly, SameSite=Strict
//!   session cookie; without the cookie nothing but the login is served, and the secret works
//!   once;
//! - every answer carries a Content-Security-Policy that allows scripts, styles and connections
//!   from this server only (no inline script, no remote resource), and the page puts peers' text
//!   into the document as text;
//! - files are served with a type judged from their bytes: pictures (never SVG) and voice notes
//!   inline, everything else as a download; uploads come only from this server's own pages
//!   (`Origin`) and are bounded at 100 MiB.

use crate::rpc_cmd;
use crate::user_cmd::ProfileArg;
use anyhow::Context as _;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The web client's files as Vite built them from `web/` (see `build.rs`): path and bytes.
const ASSETS: &[(&str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));

/// What every answer says about what the page may load and do.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   media-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; \
                   frame-ancestors 'none'";
/// The session cookie's name.
const COOKIE: &str = "pigeon_session";
/// Largest message the page may send over the WebSocket.
const MAX_WS_MESSAGE: usize = 1 << 20;
/// How often the server fetches from the relays while the page is open.
const SYNC_EVERY: Duration = Duration::from_secs(3);
/// How often the page is sent what the file transfers report.
const POLL_EVERY: Duration = Duration::from_millis(500);
/// Largest file the page may upload.
const MAX_UPLOAD: u64 = pigeon_e2ee::content::MAX_ATTACHMENT;

/// `pigeon app`.
#[derive(clap::Args, Debug)]
pub(crate) struct AppArgs {
    #[command(flatten)]
    profile: ProfileArg,
    /// Where to serve (a loopback address only) [default: 127.0.0.1 on a free port].
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<SocketAddr>,
    /// Do not try to open a browser.
    #[arg(long)]
    no_browser: bool,
}

struct AppState {
    /// `Host` values that name this server.
    hosts: [String; 2],
    /// The only `Origin` the WebSocket is accepted from.
    origin: String,
    /// The one-time login secret, until it is used.
    login: std::sync::Mutex<Option<String>>,
    /// The session cookie's value.
    session: String,
    /// The engine's thread: requests in, what to send back out.
    engine: tokio::sync::mpsc::Sender<Job>,
    /// Where uploads wait until the engine has sealed them (inside the profile).
    uploads: std::path::PathBuf,
}

/// A file to serve.
struct Served {
    /// Its type, as judged from its bytes.
    mime: String,
    /// Its (safe) name.
    name: String,
    bytes: Vec<u8>,
}

/// Work for the engine's thread.
enum Job {
    /// A request line from a page; the notifications and the answer go back.
    Line(String, tokio::sync::oneshot::Sender<Vec<serde_json::Value>>),
    /// Fetch from the relays; the notifications go back.
    Sync(tokio::sync::oneshot::Sender<Vec<serde_json::Value>>),
    /// The notifications waiting (what the file transfers report), without fetching.
    Poll(tokio::sync::oneshot::Sender<Vec<serde_json::Value>>),
    /// A file's bytes, or its thumbnail.
    File {
        id: i64,
        thumbnail: bool,
        reply: tokio::sync::oneshot::Sender<Result<Served, String>>,
    },
    /// A file the page uploaded, kept at `path`, to send.
    Upload {
        to: String,
        name: String,
        caption: String,
        voice: bool,
        path: std::path::PathBuf,
        reply: tokio::sync::oneshot::Sender<Result<serde_json::Value, String>>,
    },
}

/// Starts the engine — the profile, its database and its relay sessions — on a thread of its
/// own, where it handles one job at a time in order, as `pigeon rpc` does.
fn start_engine(dir: std::path::PathBuf) -> anyhow::Result<tokio::sync::mpsc::Sender<Job>> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Job>(64);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("pigeon-engine".to_owned())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow::anyhow!("starting the engine: {e}")));
                    return;
                }
            };
            runtime.block_on(async move {
                let mut server = match rpc_cmd::Server::new(dir) {
                    Ok(s) => {
                        let _ = ready_tx.send(Ok(()));
                        s
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while let Some(job) = rx.recv().await {
                    match job {
                        Job::Line(line, reply) => {
                            let answer = server.handle_line(&line).await;
                            let mut out = server.take_notifications();
                            out.extend(answer);
                            let _ = reply.send(out);
                        }
                        Job::Sync(reply) => {
                            let _ = reply.send(server.background_sync().await);
                        }
                        Job::Poll(reply) => {
                            let _ = reply.send(server.take_notifications());
                        }
                        Job::File {
                            id,
                            thumbnail,
                            reply,
                        } => {
                            let _ = reply.send(serve_file(&mut server, id, thumbnail));
                        }
                        Job::Upload {
                            to,
                            name,
                            caption,
                            voice,
                            path,
                            reply,
                        } => {
                            let sent = server
                                .send_file(&to, &path, Some(&name), &caption, voice)
                                .map_err(|e| e.message().to_owned());
                            // Sealed into the profile (or refused): the upload is not needed.
                            let _ = std::fs::remove_file(&path);
                            let _ = reply.send(sent);
                        }
                    }
                }
            });
        })?;
    ready_rx
        .recv()
        .map_err(|_| anyhow::anyhow!("the engine did not start"))??;
    Ok(tx)
}

/// File `id` (or its thumbnail) with the type it is served as: pictures and voice notes as
/// themselves (judged from their bytes; never SVG), everything else as bytes to download.
fn serve_file(server: &mut rpc_cmd::Server, id: i64, thumbnail: bool) -> Result<Served, String> {
    if thumbnail {
        return match server.file_thumbnail(id) {
            Ok(Some(bytes)) => Ok(Served {
                mime: "image/jpeg".to_owned(),
                name: "thumbnail.jpg".to_owned(),
                bytes,
            }),
            Ok(None) => Err("this file has no thumbnail".to_owned()),
            Err(e) => Err(e.message().to_owned()),
        };
    }
    let (info, bytes) = server.file_bytes(id).map_err(|e| e.message().to_owned())?;
    let inline = pigeon_client::profile::is_picture(&info.mime)
        || matches!(
            info.mime.as_str(),
            "audio/ogg"
                | "audio/webm"
                | "audio/mpeg"
                | "audio/mp4"
                | "audio/x-wav"
                | "audio/wav"
                | "video/webm"
        );
    Ok(Served {
        mime: if inline {
            info.mime
        } else {
            "application/octet-stream".to_owned()
        },
        name: info.name,
        bytes,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn secret() -> anyhow::Result<String> {
    let mut s = [0u8; 32];
    getrandom::fill(&mut s).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(hex(&s))
}

/// Equal, in time that does not depend on where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Runs `pigeon app` until interrupted.
pub(crate) async fn run(args: AppArgs) -> anyhow::Result<u8> {
    let listen = args
        .listen
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    anyhow::ensure!(
        listen.ip().is_loopback(),
        "pigeon app serves this machine only: --listen must be a loopback address (127.0.0.1 \
         or ::1), not {}",
        listen.ip()
    );
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let addr = listener.local_addr()?;
    let host = match addr {
        SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    };
    let login = secret()?;
    let dir = args.profile.dir()?;
    let state = Arc::new(AppState {
        hosts: [host.clone(), format!("localhost:{}", addr.port())],
        origin: format!("http://{host}"),
        login: std::sync::Mutex::new(Some(login.clone())),
        session: secret()?,
        engine: start_engine(dir.clone())?,
        uploads: dir.join(pigeon_client::profile::FILES_DIR),
    });
    let url = format!("http://{host}/login?secret={login}");
    println!("{url}");
    eprintln!(
        "Open that address in your browser (it works once; it is your key to this profile while \
         pigeon app runs). Stop with Ctrl-C."
    );
    if !args.no_browser
        && (std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some())
    {
        let _ = std::process::Command::new("xdg-open")
            .arg(&url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
    }
    let app = axum::Router::new()
        .route("/login", get(login_handler))
        .route("/rpc", get(rpc_socket))
        .route("/files", post(upload_handler))
        .route("/files/{id}", get(file_handler))
        .route("/files/{id}/thumbnail", get(thumbnail_handler))
        .fallback(get(asset))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            guard,
        ))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(0)
}

fn refuse(status: StatusCode, why: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        why,
    )
        .into_response()
}

fn cookie_ok(headers: &HeaderMap, session: &str) -> bool {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .any(|(k, v)| k == COOKIE && same(v, session))
}

/// Checks every request before it reaches a handler, and puts the security headers on every
/// answer.
async fn guard(
    State(state): State<Arc<AppState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let headers = request.headers();
    let host_ok = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|h| state.hosts.iter().any(|ours| ours == h));
    let path = request.uri().path().to_owned();
    let mut response = if !host_ok {
        refuse(
            StatusCode::MISDIRECTED_REQUEST,
            "this server answers only to its own address",
        )
    } else if path != "/login" && !cookie_ok(headers, &state.session) {
        refuse(
            StatusCode::FORBIDDEN,
            "open the address pigeon app printed (it works once); restart pigeon app for a new one",
        )
    } else if (path == "/rpc" || request.method() != axum::http::Method::GET)
        && headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) != Some(state.origin.as_str())
    {
        refuse(
            StatusCode::FORBIDDEN,
            "the connection comes from another site",
        )
    } else {
        next.run(request).await
    };
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn login_handler(
    State(state): State<Arc<AppState>>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let given = q.get("secret").map_or("", String::as_str);
    let taken = match state.login.lock() {
        Ok(mut slot) => match slot.as_deref() {
            Some(s) if same(s, given) => slot.take().is_some(),
            _ => false,
        },
        Err(_) => false,
    };
    if !taken {
        return refuse(
            StatusCode::FORBIDDEN,
            "that address does not open this app (it works once); restart pigeon app for a new one",
        );
    }
    let cookie = format!(
        "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
        state.session
    );
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, cookie),
            (header::LOCATION, "/".to_owned()),
        ],
    )
        .into_response()
}

async fn file_handler(State(state): State<Arc<AppState>>, Path(id): Path<i64>) -> Response {
    serve(&state, id, false).await
}

async fn thumbnail_handler(State(state): State<Arc<AppState>>, Path(id): Path<i64>) -> Response {
    serve(&state, id, true).await
}

async fn serve(state: &AppState, id: i64, thumbnail: bool) -> Response {
    let (reply, answer) = tokio::sync::oneshot::channel();
    if state
        .engine
        .send(Job::File {
            id,
            thumbnail,
            reply,
        })
        .await
        .is_err()
    {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "the engine has stopped");
    }
    match answer.await {
        Ok(Ok(served)) => {
            let disposition = if served.mime == "application/octet-stream" {
                "attachment"
            } else {
                "inline"
            };
            let ascii: String = served
                .name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || " .-_()".contains(c) {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            let encoded: String = served
                .name
                .bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b".-_".contains(&b) {
                        char::from(b).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect();
            (
                [
                    (header::CONTENT_TYPE, served.mime),
                    (
                        header::CONTENT_DISPOSITION,
                        format!("{disposition}; filename=\"{ascii}\"; filename*=UTF-8''{encoded}"),
                    ),
                ],
                served.bytes,
            )
                .into_response()
        }
        Ok(Err(why)) => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            why,
        )
            .into_response(),
        Err(_) => refuse(StatusCode::SERVICE_UNAVAILABLE, "the engine has stopped"),
    }
}

/// `POST /files?to=NAME&name=FILE[&caption=TEXT][&voice=1]` with the file as the body: kept
/// inside the profile until the engine has sealed it, then sent like `files.send`.
async fn upload_handler(
    State(state): State<Arc<AppState>>,
    Query(q): Query<std::collections::HashMap<String, String>>,
    body: axum::body::Body,
) -> Response {
    use futures_util::StreamExt as _;
    use tokio::io::AsyncWriteExt as _;
    let (Some(to), Some(name)) = (q.get("to"), q.get("name")) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "an upload names its conversation (to) and file (name)",
        );
    };
    if let Err(e) = tokio::fs::create_dir_all(&state.uploads).await {
        return bad_request(&format!("the profile's files directory: {e}"));
    }
    let path = match secret() {
        Ok(s) => state.uploads.join(format!(".upload-{s}")),
        Err(e) => return bad_request(&e.to_string()),
    };
    let written: Result<(), String> = async {
        let mut file = tokio::fs::File::create(&path)
            .await
            .map_err(|e| format!("keeping the upload: {e}"))?;
        let mut stream = body.into_data_stream();
        let mut total = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| format!("the upload broke off: {e}"))?;
            total += chunk.len() as u64;
            if total > MAX_UPLOAD {
                return Err("a file may be at most 100 MiB".to_owned());
            }
            file.write_all(&chunk)
                .await
                .map_err(|e| format!("keeping the upload: {e}"))?;
        }
        file.flush()
            .await
            .map_err(|e| format!("keeping the upload: {e}"))
    }
    .await;
    if let Err(why) = written {
        let _ = tokio::fs::remove_file(&path).await;
        return bad_request(&why);
    }
    let (reply, answer) = tokio::sync::oneshot::channel();
    let job = Job::Upload {
        to: to.clone(),
        name: name.clone(),
        caption: q.get("caption").cloned().unwrap_or_default(),
        voice: q.get("voice").is_some_and(|v| v == "1"),
        path: path.clone(),
        reply,
    };
    if state.engine.send(job).await.is_err() {
        let _ = tokio::fs::remove_file(&path).await;
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "the engine has stopped");
    }
    match answer.await {
        Ok(Ok(value)) => (
            [(header::CONTENT_TYPE, "application/json")],
            value.to_string(),
        )
            .into_response(),
        Ok(Err(why)) => bad_request(&why),
        Err(_) => refuse(StatusCode::SERVICE_UNAVAILABLE, "the engine has stopped"),
    }
}

fn bad_request(why: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        why.to_owned(),
    )
        .into_response()
}

/// A file of the web client (`/` is its page), with its type; anything else is not found.
async fn asset(uri: axum::http::Uri) -> Response {
    let path = match uri.path() {
        "/" => "/index.html",
        other => other,
    };
    let Some((_, bytes)) = ASSETS.iter().find(|(p, _)| *p == path) else {
        return refuse(StatusCode::NOT_FOUND, "not found");
    };
    let kind = match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    };
    ([(header::CONTENT_TYPE, kind)], *bytes).into_response()
}

async fn rpc_socket(State(state): State<Arc<AppState>>, ws: WebSocketUpgrade) -> Response {
    ws.max_message_size(MAX_WS_MESSAGE)
        .on_upgrade(move |socket| serve_socket(socket, state))
}

/// One page's connection: its requests answered in order, and what the relays bring pushed.
async fn serve_socket(mut socket: WebSocket, state: Arc<AppState>) {
    let mut tick = tokio::time::interval(SYNC_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut poll = tokio::time::interval(POLL_EVERY);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let out = tokio::select! {
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    let line = text.as_str().to_owned();
                    ask(&state, |reply| Job::Line(line, reply)).await
                }
                Some(Ok(Message::Binary(_))) => Some(vec![rpc_cmd::not_text()]),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return,
            },
            _ = tick.tick() => ask(&state, Job::Sync).await,
            _ = poll.tick() => ask(&state, Job::Poll).await,
        };
        let Some(out) = out else {
            return;
        };
        for value in out {
            if socket
                .send(Message::Text(value.to_string().into()))
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

/// Hands a job to the engine and waits for what it sends back (`None`: the engine is gone).
async fn ask(
    state: &AppState,
    job: impl FnOnce(tokio::sync::oneshot::Sender<Vec<serde_json::Value>>) -> Job,
) -> Option<Vec<serde_json::Value>> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    state.engine.send(job(reply)).await.ok()?;
    answer.await.ok()
}
