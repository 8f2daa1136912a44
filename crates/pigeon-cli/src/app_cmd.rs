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
//!   into the document as text.

use crate::rpc_cmd;
use crate::user_cmd::ProfileArg;
use anyhow::Context as _;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The web client's files as Vite built them from `web/` (see `build.rs`): path and bytes.
const ASSETS: &[(&str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));

/// What every answer says about what the page may load and do.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";
/// The session cookie's name.
const COOKIE: &str = "pigeon_session";
/// Largest message the page may send over the WebSocket.
const MAX_WS_MESSAGE: usize = 1 << 20;
/// How often the server fetches from the relays while the page is open.
const SYNC_EVERY: Duration = Duration::from_secs(3);

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
}

/// Work for the engine's thread.
enum Job {
    /// A request line from a page; the notifications and the answer go back.
    Line(String, tokio::sync::oneshot::Sender<Vec<serde_json::Value>>),
    /// Fetch from the relays; the notifications go back.
    Sync(tokio::sync::oneshot::Sender<Vec<serde_json::Value>>),
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
                    }
                }
            });
        })?;
    ready_rx
        .recv()
        .map_err(|_| anyhow::anyhow!("the engine did not start"))??;
    Ok(tx)
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
    let state = Arc::new(AppState {
        hosts: [host.clone(), format!("localhost:{}", addr.port())],
        origin: format!("http://{host}"),
        login: std::sync::Mutex::new(Some(login.clone())),
        session: secret()?,
        engine: start_engine(args.profile.dir()?)?,
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
    } else if path == "/rpc"
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
