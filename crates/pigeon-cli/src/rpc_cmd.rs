//! `pigeon rpc`: the client's core over JSON-RPC 2.0 on standard input and output, one object
//! per line (issue #17). Front ends — the web app, mobile shells, scripts — drive the same
//! engine through it, the way Delta Chat's front ends drive its core.
//!
//! Requests are handled one after the other, in the order they arrive. What happens on the
//! network while a call runs (a message arrives, a contact accepts) is pushed before that
//! call's answer as a notification: `{"jsonrpc":"2.0","method":"event","params":{…}}`. The
//! methods and an example session are in docs/RPC.md.
//!
//! Every request is checked before anything is done: a line that is not JSON, a request that
//! is not JSON-RPC 2.0, an unknown method, and a parameter missing or of the wrong type are
//! answered with the standard error codes and a sentence naming what is wrong. Failures of the
//! call itself come back as code -32000 with `data.kind` saying whose fault it is (the network,
//! a relay, the other side, what was given).

use crate::user_cmd::{CONNECT_TIMEOUT, ProfileArg};
use pigeon_client::{
    Client, ClientEvent, Contact, GroupChange, GroupInfo, GroupMessage, Passphrase, Profile,
    ProfileError, RouteProgress,
};
use serde_json::{Map, Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};

/// Longest request line read; a longer one is answered with an error and skipped.
const MAX_LINE: usize = 1 << 20;
/// Most requests in one batch.
const MAX_BATCH: usize = 100;
/// Most lines `messages.list` returns at once.
const MAX_PAGE: i64 = 1000;
/// Longest message text `messages.send` takes (a chat message, not a file).
const MAX_TEXT_BYTES: usize = 64 * 1024;

/// `pigeon rpc`.
#[derive(clap::Args, Debug)]
pub(crate) struct RpcArgs {
    #[command(flatten)]
    profile: ProfileArg,
}

/// A JSON-RPC error: its code, a sentence, and for a failed call whose fault it was.
#[derive(Debug)]
pub(crate) struct RpcError {
    code: i64,
    message: String,
    kind: Option<&'static str>,
}

impl RpcError {
    fn parse(message: impl Into<String>) -> Self {
        Self::new(-32700, message)
    }
    fn invalid(message: impl Into<String>) -> Self {
        Self::new(-32600, message)
    }
    fn no_method(method: &str) -> Self {
        Self::new(
            -32601,
            format!("there is no method {method:?} (rpc.methods lists them)"),
        )
    }
    fn params(message: impl Into<String>) -> Self {
        Self::new(-32602, message)
    }
    fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            kind: None,
        }
    }

    /// The sentence.
    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    fn to_value(&self) -> Value {
        let mut e = json!({ "code": self.code, "message": self.message });
        if let Some(kind) = self.kind {
            e["data"] = json!({ "kind": kind });
        }
        e
    }
}

impl From<anyhow::Error> for RpcError {
    fn from(e: anyhow::Error) -> Self {
        Self {
            code: -32000,
            message: crate::chain_once(&e),
            kind: Some(crate::kind_of(&e).map_or("unknown", kind_name)),
        }
    }
}

impl From<pigeon_client::Error> for RpcError {
    fn from(e: pigeon_client::Error) -> Self {
        anyhow::Error::from(e).into()
    }
}

impl From<ProfileError> for RpcError {
    fn from(e: ProfileError) -> Self {
        anyhow::Error::from(e).into()
    }
}

fn kind_name(kind: pigeon_wire::ErrorKind) -> &'static str {
    use pigeon_wire::ErrorKind;
    match kind {
        ErrorKind::LocalNetwork => "network",
        ErrorKind::Relay => "relay",
        ErrorKind::Peer => "peer",
        ErrorKind::BadInput => "input",
        ErrorKind::Refused => "refused",
        ErrorKind::Internal => "internal",
        _ => "unknown",
    }
}

/// The methods, for `rpc.methods` and docs/RPC.md.
const METHODS: &[&str] = &[
    "rpc.methods",
    "profile.create",
    "profile.open",
    "profile.info",
    "profile.read_receipts",
    "conversations.list",
    "contacts.list",
    "groups.list",
    "invite.create",
    "invite.accept",
    "messages.list",
    "messages.send",
    "messages.mark_read",
    "groups.create",
    "groups.invite",
    "groups.add",
    "groups.remove",
    "groups.leave",
    "groups.rename",
    "groups.admin",
    "groups.members",
    "devices.list",
    "devices.link",
    "devices.link_progress",
    "devices.remove",
    "relays.list",
    "relays.add",
    "relays.remove",
    "proxies.list",
    "proxies.add",
    "proxies.remove",
    "connection.check",
    "files.send",
    "files.list",
    "files.save",
    "sync",
];

/// The parameters of one call, with typed getters that say what is wrong.
struct Params<'a>(&'a Map<String, Value>);

impl Params<'_> {
    fn str(&self, name: &str) -> Result<&str, RpcError> {
        match self.0.get(name) {
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(RpcError::params(format!("params.{name} must be a string"))),
            None => Err(RpcError::params(format!("params.{name} is missing"))),
        }
    }

    fn opt_str(&self, name: &str) -> Result<Option<&str>, RpcError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.str(name).map(Some),
        }
    }

    fn opt_int(&self, name: &str, min: i64, max: i64) -> Result<Option<i64>, RpcError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_i64() {
                Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
                _ => Err(RpcError::params(format!(
                    "params.{name} must be a whole number from {min} to {max}"
                ))),
            },
        }
    }

    fn opt_bool(&self, name: &str) -> Result<Option<bool>, RpcError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(RpcError::params(format!(
                "params.{name} must be true or false"
            ))),
        }
    }

    fn relay_link(&self, name: &str) -> Result<pigeon_transport::RelayLink, RpcError> {
        pigeon_transport::RelayLink::parse(self.str(name)?.trim())
            .map_err(|e| RpcError::params(format!("params.{name} is not a relay link: {e}")))
    }

    fn proxy_link(&self, name: &str) -> Result<pigeon_transport::ProxyLink, RpcError> {
        pigeon_transport::ProxyLink::parse(self.str(name)?.trim())
            .map_err(|e| RpcError::params(format!("params.{name} is not a proxy link: {e}")))
    }

    /// Refuses parameters the method does not take (a typo is an error, not ignored).
    fn only(&self, names: &[&str]) -> Result<(), RpcError> {
        match self.0.keys().find(|k| !names.contains(&k.as_str())) {
            Some(k) => Err(RpcError::params(format!(
                "params.{k} is not a parameter of this method (it takes: {})",
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            ))),
            None => Ok(()),
        }
    }
}

/// One session of the core (`pigeon rpc`, or a page of `pigeon app`): the profile directory,
/// the open profile's client, and the notifications waiting to go out before the next answer.
pub(crate) struct Server {
    dir: PathBuf,
    client: Option<Client>,
    notifications: Vec<Value>,
    /// The mailbox of the device link this session made last (for `devices.link_progress`).
    device_link: Option<[u8; 32]>,
    /// Route attempts reported while a call runs, as notifications to send.
    routes: Arc<std::sync::Mutex<Vec<Value>>>,
    /// The file transfers of the open profile, on a thread of their own.
    transfers: Option<crate::transfers::Transfers>,
}

impl Server {
    /// A session on the profile in `dir`, open from the start when `PIGEON_PASSPHRASE` is set
    /// and a profile is there.
    ///
    /// # Errors
    /// When that profile does not open.
    pub(crate) fn new(dir: PathBuf) -> anyhow::Result<Self> {
        let mut server = Self {
            client: None,
            notifications: Vec::new(),
            dir,
            device_link: None,
            routes: Arc::default(),
            transfers: None,
        };
        if let Ok(pass) = std::env::var("PIGEON_PASSPHRASE")
            && server.dir.join(pigeon_client::profile::DB_FILE).exists()
        {
            let passphrase = Passphrase::new(pass);
            let profile = Profile::open(&server.dir, &passphrase)?;
            server.opened(profile, passphrase)?;
        }
        Ok(server)
    }

    /// Makes `profile` the open one, with its file transfers started.
    fn opened(&mut self, profile: Profile, passphrase: Passphrase) -> anyhow::Result<()> {
        self.client = Some(self.client_for(profile));
        self.transfers = Some(crate::transfers::Transfers::start(
            self.dir.clone(),
            passphrase,
        )?);
        Ok(())
    }

    /// Asks the transfers to look for work (a file was chosen, or a sync may have brought one).
    fn nudge_transfers(&self) {
        if let Some(t) = &self.transfers {
            t.nudge();
        }
    }

    /// A client on `profile` whose route searches are reported as `route` events: each
    /// attempt of each relay (trying, failed and why, connected after how long), with a flag
    /// when the failure looks like censorship (the local network's fault).
    fn client_for(&self, profile: Profile) -> Client {
        let mut client = Client::new(profile, CONNECT_TIMEOUT);
        let routes = Arc::clone(&self.routes);
        client.set_progress(Box::new(move |link, progress| {
            let relay: String = link.relay_key()[..4]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let params = match progress {
                RouteProgress::Trying { route, after } => json!({
                    "kind": "route", "relay": relay, "state": "trying", "route": route,
                    "after_ms": after.as_millis(),
                }),
                RouteProgress::Failed {
                    route,
                    after,
                    error,
                    kind,
                } => json!({
                    "kind": "route", "relay": relay, "state": "failed", "route": route,
                    "after_ms": after.as_millis(), "error": error,
                    "censorship_likely": kind == pigeon_wire::ErrorKind::LocalNetwork,
                }),
                RouteProgress::Connected { route, after } => json!({
                    "kind": "route", "relay": relay, "state": "connected", "route": route,
                    "after_ms": after.as_millis(),
                }),
            };
            if let Ok(mut r) = routes.lock() {
                // Bounded: a call that searches long keeps the newest attempts.
                if r.len() >= 256 {
                    r.remove(0);
                }
                r.push(json!({ "jsonrpc": "2.0", "method": "event", "params": params }));
            }
        }));
        client
    }

    /// The notifications that go out before the next answer: route attempts, then events.
    pub(crate) fn take_notifications(&mut self) -> Vec<Value> {
        let mut out = self
            .routes
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default();
        out.append(&mut self.notifications);
        if let Some(t) = &self.transfers {
            out.extend(t.take_events());
        }
        out
    }

    /// Fetches from the relays (briefly) when a profile is open: the events, as notifications.
    pub(crate) async fn background_sync(&mut self) -> Vec<Value> {
        if self.client.is_some() {
            let _ = self.sync(Duration::from_millis(200)).await;
        }
        self.take_notifications()
    }

    /// Sends and fetches for `wait`; the events become notifications.
    async fn sync(&mut self, wait: Duration) -> Result<Value, RpcError> {
        let client = self.client()?;
        let (events, report) = client.sync(wait, Duration::from_secs(30)).await?;
        self.nudge_transfers();
        let client = self.client()?;
        let count = events.len();
        let notes: Vec<Value> = events
            .iter()
            .filter_map(|e| event_json(e, client.profile()))
            .collect();
        self.notifications.extend(notes);
        Ok(json!({ "events": count, "sent": report.sent, "waiting": report.waiting }))
    }

    /// Chooses the file at `path` (under `name`, or its own) to send to `to`; the transfers
    /// upload it and send its message. Returns the line and the file.
    ///
    /// # Errors
    /// For an unknown conversation, or a file that cannot be sent (empty, too large, not
    /// readable).
    pub(crate) fn send_file(
        &mut self,
        to: &str,
        path: &std::path::Path,
        name: Option<&str>,
        caption: &str,
        voice: bool,
    ) -> Result<Value, RpcError> {
        let kind = voice.then_some(pigeon_client::AttachmentKind::Voice);
        let (line, file) = self.client()?.attach(to, path, name, caption, kind)?;
        let label = self.profile()?.conversation_label(line.group_id)?;
        let answer = json!({
            "line": line_json(&line, &label),
            "file": crate::files_cmd::file_json(&file),
        });
        self.nudge_transfers();
        Ok(answer)
    }

    /// File `id`'s bytes (a file sent, or received and checked), with what it is.
    ///
    /// # Errors
    /// For a file that is not here (yet).
    pub(crate) fn file_bytes(
        &mut self,
        id: i64,
    ) -> Result<(pigeon_client::FileInfo, Vec<u8>), RpcError> {
        let profile = self.profile()?;
        let info = profile.file(id)?;
        let bytes = profile.read_file(id)?;
        Ok((info, bytes))
    }

    /// A picture's thumbnail (a JPEG), if it came with one.
    ///
    /// # Errors
    /// For a file that does not exist.
    pub(crate) fn file_thumbnail(&mut self, id: i64) -> Result<Option<Vec<u8>>, RpcError> {
        Ok(self.profile()?.file_thumbnail(id)?)
    }

    fn client(&mut self) -> Result<&mut Client, RpcError> {
        self.client.as_mut().ok_or_else(|| {
            RpcError::new(
                -32001,
                "no profile is open: call profile.open (or profile.create) first",
            )
        })
    }

    fn profile(&mut self) -> Result<&Profile, RpcError> {
        Ok(self.client()?.profile())
    }

    /// Answers one line: a request, a notification (no answer) or a batch.
    pub(crate) async fn handle_line(&mut self, line: &str) -> Option<Value> {
        let value: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                return Some(error_response(
                    Value::Null,
                    &RpcError::parse(format!("the line is not JSON ({e})")),
                ));
            }
        };
        match value {
            Value::Array(batch) if batch.is_empty() => Some(error_response(
                Value::Null,
                &RpcError::invalid("an empty batch"),
            )),
            Value::Array(batch) if batch.len() > MAX_BATCH => Some(error_response(
                Value::Null,
                &RpcError::invalid(format!("a batch of more than {MAX_BATCH} requests")),
            )),
            Value::Array(batch) => {
                let mut answers = Vec::new();
                for request in batch {
                    if let Some(a) = self.handle_request(request).await {
                        answers.push(a);
                    }
                }
                (!answers.is_empty()).then_some(Value::Array(answers))
            }
            request => self.handle_request(request).await,
        }
    }

    async fn handle_request(&mut self, request: Value) -> Option<Value> {
        let Value::Object(mut request) = request else {
            return Some(error_response(
                Value::Null,
                &RpcError::invalid("a request must be a JSON object"),
            ));
        };
        let id = request.remove("id");
        let answer_id = id.clone().unwrap_or(Value::Null);
        if !matches!(
            id,
            None | Some(Value::Null | Value::Number(_) | Value::String(_))
        ) {
            return Some(error_response(
                Value::Null,
                &RpcError::invalid("id must be a string, a number or null"),
            ));
        }
        if request.get("jsonrpc") != Some(&Value::String("2.0".to_owned())) {
            return Some(error_response(
                answer_id,
                &RpcError::invalid("jsonrpc must be \"2.0\""),
            ));
        }
        let method = match request.remove("method") {
            Some(Value::String(m)) => m,
            _ => {
                return Some(error_response(
                    answer_id,
                    &RpcError::invalid("method must be a string"),
                ));
            }
        };
        let params = match request.remove("params") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(p)) => p,
            Some(_) => {
                return Some(error_response(
                    answer_id,
                    &RpcError::params("params must be an object of named parameters"),
                ));
            }
        };
        let result = self.call(&method, &Params(&params)).await;
        // A notification (no id) gets no answer, not even an error.
        id.as_ref()?;
        Some(match result {
            Ok(value) => json!({ "jsonrpc": "2.0", "id": answer_id, "result": value }),
            Err(e) => error_response(answer_id, &e),
        })
    }

    async fn call(&mut self, method: &str, p: &Params<'_>) -> Result<Value, RpcError> {
        match method {
            "rpc.methods" => {
                p.only(&[])?;
                Ok(json!(METHODS))
            }
            "profile.create" => {
                p.only(&["name", "relay", "passphrase", "device"])?;
                let relay = p.relay_link("relay")?;
                let passphrase = Passphrase::new(p.str("passphrase")?.to_owned());
                let profile =
                    Profile::create(&self.dir, &passphrase, p.str("name")?.trim(), &relay)?;
                if let Some(device) = p.opt_str("device")? {
                    profile.set_device_name(device.trim())?;
                }
                self.opened(profile, passphrase)?;
                self.profile_info()
            }
            "profile.open" => {
                p.only(&["passphrase"])?;
                let passphrase = Passphrase::new(p.str("passphrase")?.to_owned());
                let profile = Profile::open(&self.dir, &passphrase)?;
                self.opened(profile, passphrase)?;
                self.profile_info()
            }
            "profile.info" => {
                p.only(&[])?;
                self.profile_info()
            }
            "profile.read_receipts" => {
                p.only(&["send"])?;
                let profile = self.profile()?;
                if let Some(on) = p.opt_bool("send")? {
                    profile.set_read_receipts(on)?;
                }
                Ok(json!({ "send": profile.read_receipts()? }))
            }
            "conversations.list" => {
                p.only(&[])?;
                let profile = self.profile()?;
                let mut out = Vec::new();
                for c in profile.contacts()? {
                    out.push(json!({
                        "kind": "contact",
                        "name": c.name,
                        "unread": c.unread,
                        "last": last_line(profile, &c.name)?,
                    }));
                }
                for g in profile.groups()? {
                    out.push(json!({
                        "kind": "group",
                        "name": g.name,
                        "unread": g.unread,
                        "last": last_line(profile, &format!("#{}", g.id.0))?,
                    }));
                }
                Ok(Value::Array(out))
            }
            "contacts.list" => {
                p.only(&[])?;
                Ok(Value::Array(
                    self.profile()?
                        .contacts()?
                        .iter()
                        .map(contact_json)
                        .collect(),
                ))
            }
            "groups.list" => {
                p.only(&[])?;
                Ok(Value::Array(
                    self.profile()?.groups()?.iter().map(group_json).collect(),
                ))
            }
            "invite.create" => {
                p.only(&[])?;
                let link = self.client()?.invite().await?;
                Ok(json!({ "link": link, "qr_svg": crate::qr::svg(&link)? }))
            }
            "invite.accept" => {
                p.only(&["link", "name"])?;
                let link = p.str("link")?.trim().to_owned();
                let name = p.opt_str("name")?.map(str::to_owned);
                let (contact, _) = self.client()?.accept(&link, name.as_deref()).await?;
                Ok(contact_json(&contact))
            }
            "messages.list" => {
                p.only(&["with", "limit", "before"])?;
                let with = p.str("with")?;
                let limit = p.opt_int("limit", 1, MAX_PAGE)?.unwrap_or(50);
                let before = p.opt_int("before", 1, i64::MAX)?;
                let profile = self.profile()?;
                let id = profile.conversation_or_group(with)?;
                let label = profile.conversation_label(id)?;
                let lines = profile.group_history_before(id, before, limit)?;
                Ok(Value::Array(
                    lines.iter().map(|m| line_json(m, &label)).collect(),
                ))
            }
            "files.send" => {
                p.only(&["to", "path", "caption", "voice"])?;
                let to = p.str("to")?.to_owned();
                let path = PathBuf::from(p.str("path")?);
                let caption = p.opt_str("caption")?.unwrap_or_default().to_owned();
                let voice = p.opt_bool("voice")?.unwrap_or(false);
                self.send_file(&to, &path, None, &caption, voice)
            }
            "files.list" => {
                p.only(&["with"])?;
                let profile = self.profile()?;
                let group = match p.opt_str("with")? {
                    Some(name) => Some(profile.conversation_or_group_contact_first(name)?),
                    None => None,
                };
                Ok(Value::Array(
                    profile
                        .files(group)?
                        .iter()
                        .map(crate::files_cmd::file_json)
                        .collect(),
                ))
            }
            "files.save" => {
                p.only(&["id", "path"])?;
                let id = p
                    .opt_int("id", 1, i64::MAX)?
                    .ok_or_else(|| RpcError::params("params.id is missing"))?;
                let dest = PathBuf::from(p.str("path")?);
                let saved = self.profile()?.export_file(id, &dest)?;
                Ok(json!({ "path": saved.display().to_string() }))
            }
            "messages.send" => {
                p.only(&["to", "text"])?;
                let to = p.str("to")?.to_owned();
                let text = p.str("text")?.to_owned();
                if text.is_empty() || text.len() > MAX_TEXT_BYTES {
                    return Err(RpcError::params(format!(
                        "params.text must be 1 to {MAX_TEXT_BYTES} bytes"
                    )));
                }
                let client = self.client()?;
                let is_contact = client.profile().find_contact(&to).is_ok();
                let (id, report) = if !is_contact && client.profile().find_group(&to).is_ok() {
                    let (m, r) = client.send_group(&to, &text).await?;
                    (m.id, r)
                } else {
                    let (m, r) = client.send(&to, &text).await?;
                    (m.id, r)
                };
                Ok(json!({
                    "id": id,
                    "sent": report.waiting == 0,
                    "waiting": report.waiting,
                    "errors": report.errors,
                }))
            }
            "messages.mark_read" => {
                p.only(&["with"])?;
                let with = p.opt_str("with")?.map(str::to_owned);
                let profile = self.profile()?;
                let read = match with {
                    None => {
                        profile.take_unread(None)?.len() + profile.take_group_unread(None)?.len()
                    }
                    Some(name) => match profile.find_contact(&name) {
                        Ok(c) => profile.take_unread(Some(c.id))?.len(),
                        Err(_) => {
                            let g = profile.find_group(&name)?;
                            profile.take_group_unread(Some(g.id))?.len()
                        }
                    },
                };
                // The person's other devices learn it at the next sync.
                Ok(json!({ "read": read }))
            }
            "groups.create" => {
                p.only(&["name"])?;
                let name = p.str("name")?.trim().to_owned();
                let info = self.client()?.create_group(&name).await?;
                Ok(group_json(&info))
            }
            "groups.invite" => {
                p.only(&["group"])?;
                let group = p.str("group")?.to_owned();
                let link = self.client()?.group_invite(&group).await?;
                Ok(json!({ "link": link, "qr_svg": crate::qr::svg(&link)? }))
            }
            "groups.add" => {
                p.only(&["group", "contact"])?;
                let (group, contact) = (p.str("group")?.to_owned(), p.str("contact")?.to_owned());
                self.client()?.group_add_contact(&group, &contact).await?;
                Ok(json!({}))
            }
            "groups.remove" | "groups.admin" | "groups.rename" => {
                let (group, arg) = if method == "groups.rename" {
                    p.only(&["group", "name"])?;
                    (p.str("group")?.to_owned(), p.str("name")?.to_owned())
                } else {
                    p.only(&["group", "member"])?;
                    (p.str("group")?.to_owned(), p.str("member")?.to_owned())
                };
                let change = match method {
                    "groups.remove" => GroupChange::Remove(&arg),
                    "groups.admin" => GroupChange::Promote(&arg),
                    _ => GroupChange::Rename(&arg),
                };
                let report = self.client()?.group_change(&group, change).await?;
                Ok(json!({ "sent": report.waiting == 0 }))
            }
            "groups.leave" => {
                p.only(&["group"])?;
                let group = p.str("group")?.to_owned();
                let report = self.client()?.leave_group(&group).await?;
                Ok(json!({ "sent": report.waiting == 0 }))
            }
            "groups.members" => {
                p.only(&["group"])?;
                let group = p.str("group")?;
                let profile = self.profile()?;
                let g = profile.find_group(group)?;
                let members = profile.group_members(g.id)?;
                Ok(Value::Array(
                    members
                        .iter()
                        .map(|m| {
                            json!({
                                "name": m.name,
                                "device": m.device,
                                "admin": m.admin,
                                "you": m.you,
                                "verified": m.verified,
                            })
                        })
                        .collect(),
                ))
            }
            "devices.list" => {
                p.only(&[])?;
                let devices = self.profile()?.devices()?;
                Ok(Value::Array(
                    devices
                        .iter()
                        .map(|d| {
                            json!({
                                "name": d.name,
                                "this": d.this,
                                "conversations": d.conversations,
                                "linked_at_ms": d.linked_at,
                                "last_seen_ms": d.last_seen,
                            })
                        })
                        .collect(),
                ))
            }
            "devices.link" => {
                p.only(&["history_days"])?;
                let days = p.opt_int("history_days", 0, 3650)?.unwrap_or(30);
                let days = u32::try_from(days).unwrap_or(30);
                let link = self.client()?.link_device(days).await?;
                let text = link.to_link().map_err(pigeon_client::Error::from)?;
                self.device_link = Some(link.mailbox_id);
                Ok(json!({ "link": text, "qr_svg": crate::qr::svg(&text)? }))
            }
            "devices.link_progress" => {
                p.only(&[])?;
                let Some(mailbox) = self.device_link else {
                    return Err(RpcError::params(
                        "this session made no device link (devices.link makes one)",
                    ));
                };
                let progress = self.profile()?.device_link_progress(&mailbox)?;
                Ok(json!({
                    "device": progress.device,
                    "answered": progress.answered,
                    "offered": progress.offered,
                    "welcomed": progress.welcomed,
                    "done": progress.done,
                    "expired": progress.expired,
                }))
            }
            "devices.remove" => {
                p.only(&["name"])?;
                let name = p.str("name")?.to_owned();
                let client = self.client()?;
                let conversations = client.profile().remove_device(&name)?;
                let report = client.flush(true).await?;
                Ok(json!({ "conversations": conversations, "sent": report.waiting == 0 }))
            }
            "relays.list" => {
                p.only(&[])?;
                let relays = self.profile()?.relays()?;
                Ok(json!(
                    relays.iter().map(ToString::to_string).collect::<Vec<_>>()
                ))
            }
            "relays.add" => {
                p.only(&["link"])?;
                let link = p.relay_link("link")?;
                let outcome = match self.profile()?.add_relay(&link)? {
                    pigeon_client::RelayAdded::Added => json!({ "added": true }),
                    pigeon_client::RelayAdded::Updated(n) => {
                        json!({ "added": false, "links_updated": n })
                    }
                    pigeon_client::RelayAdded::AlreadyThere => json!({ "added": false }),
                };
                Ok(outcome)
            }
            "relays.remove" => {
                p.only(&["link"])?;
                let link = p.relay_link("link")?;
                Ok(json!({ "removed": self.profile()?.remove_relay(&link)? }))
            }
            "proxies.add" => {
                p.only(&["link", "always"])?;
                let link = p.proxy_link("link")?;
                let always = p.opt_bool("always")?.unwrap_or(false);
                Ok(json!({ "added": self.profile()?.add_proxy(&link, always)? }))
            }
            "proxies.remove" => {
                p.only(&["link"])?;
                let link = p.proxy_link("link")?;
                Ok(json!({ "removed": self.profile()?.remove_proxy(&link)? }))
            }
            "proxies.list" => {
                p.only(&[])?;
                let proxies = self.profile()?.proxies()?;
                Ok(Value::Array(
                    proxies
                        .iter()
                        .map(|x| json!({ "link": x.link.to_string(), "always": x.always }))
                        .collect(),
                ))
            }
            "connection.check" => {
                p.only(&[])?;
                let client = self.client()?;
                let relays = client.profile().relays()?;
                let results = client.connect_all(&relays).await;
                Ok(Value::Array(
                    relays
                        .iter()
                        .zip(results)
                        .map(|(relay, r)| match r {
                            Ok(route) => json!({
                                "relay": relay.to_string(), "connected": true, "route": route,
                            }),
                            Err(e) => json!({
                                "relay": relay.to_string(),
                                "connected": false,
                                "error": e.to_string(),
                                "kind": kind_name(e.kind()),
                            }),
                        })
                        .collect(),
                ))
            }
            "sync" => {
                p.only(&["wait_ms"])?;
                let wait = p.opt_int("wait_ms", 0, 60_000)?.unwrap_or(500);
                self.sync(Duration::from_millis(u64::try_from(wait).unwrap_or(500)))
                    .await
            }
            other => Err(RpcError::no_method(other)),
        }
    }

    fn profile_info(&mut self) -> Result<Value, RpcError> {
        let dir = self.dir.display().to_string();
        let profile = self.profile()?;
        Ok(json!({
            "name": profile.name()?,
            "device": profile.device_name()?,
            "relay": profile.relay()?.to_string(),
            "dir": dir,
        }))
    }
}

/// The answer to a message that is not text (the WebSocket carries JSON text only).
pub(crate) fn not_text() -> Value {
    error_response(
        Value::Null,
        &RpcError::parse("messages are JSON text, not binary"),
    )
}

fn error_response(id: Value, e: &RpcError) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "error": e.to_value() })
}

fn contact_json(c: &Contact) -> Value {
    json!({
        "id": c.id.0,
        "name": c.name,
        "suite": c.suite.name(),
        "unread": c.unread,
        "queued": c.queued,
        "created_at_ms": c.created_at_ms,
    })
}

fn group_json(g: &GroupInfo) -> Value {
    json!({
        "id": g.id.0,
        "name": g.name,
        "members": g.members,
        "admin": g.admin,
        "unread": g.unread,
        "epoch": g.epoch,
        "state": g.state,
    })
}

fn line_json(m: &GroupMessage, conversation: &str) -> Value {
    json!({
        "id": m.id,
        "conversation": conversation,
        "seq": m.seq,
        "from": m.sender,
        "outgoing": m.outgoing,
        "notice": m.notice,
        "text": m.text,
        "sent_at_ms": m.sent_at_ms,
        "read": m.read,
        "delivered": m.delivered,
        "seen": m.seen,
        "file": m.file.as_ref().map(crate::files_cmd::file_json),
    })
}

/// The newest line of a conversation, if it has one.
fn last_line(profile: &Profile, name: &str) -> Result<Value, RpcError> {
    let Ok(id) = profile.conversation_or_group(name) else {
        return Ok(Value::Null);
    };
    let label = profile.conversation_label(id)?;
    Ok(profile
        .group_history(id, 1)?
        .last()
        .map_or(Value::Null, |m| line_json(m, &label)))
}

/// An event as a notification's params; `None` for what a front end does not show.
fn event_json(event: &ClientEvent, profile: &Profile) -> Option<Value> {
    let params = match event {
        ClientEvent::Group(m) => {
            let label = profile
                .conversation_label(m.group_id)
                .unwrap_or_else(|_| m.group.clone());
            json!({ "kind": "message", "line": line_json(m, &label) })
        }
        ClientEvent::Message(m) => json!({
            "kind": "message",
            "line": {
                "id": m.id, "conversation": m.contact, "from": m.contact,
                "outgoing": m.outgoing, "notice": m.notice, "text": m.text,
                "sent_at_ms": m.sent_at_ms,
            },
        }),
        ClientEvent::NewContact(c) | ClientEvent::Introduced(c) => {
            json!({ "kind": "contact", "contact": contact_json(c) })
        }
        ClientEvent::JoinedGroup(g) => json!({ "kind": "joined", "group": group_json(g) }),
        ClientEvent::Delivered { contact_id, count } => json!({
            "kind": "delivered",
            "contact": profile.contact(*contact_id).ok().map(|c| c.name),
            "count": count,
        }),
        ClientEvent::Notice(text) => json!({ "kind": "notice", "text": text }),
        ClientEvent::Dropped(reason) => json!({ "kind": "dropped", "reason": reason }),
        ClientEvent::Disconnected { reason } => {
            json!({ "kind": "disconnected", "reason": reason })
        }
        _ => return None,
    };
    Some(json!({ "jsonrpc": "2.0", "method": "event", "params": params }))
}

/// Runs `pigeon rpc` until standard input ends.
pub(crate) async fn run(args: RpcArgs) -> anyhow::Result<u8> {
    let mut server = Server::new(args.profile.dir()?)?;
    let mut input = tokio::io::BufReader::new(tokio::io::stdin());
    let mut out = tokio::io::stdout();
    let mut line = Vec::new();
    loop {
        line.clear();
        let (n, too_long) = read_bounded_line(&mut input, &mut line).await?;
        if n == 0 {
            return Ok(0);
        }
        let answer = if too_long {
            Some(error_response(
                Value::Null,
                &RpcError::invalid(format!("a request line longer than {MAX_LINE} bytes")),
            ))
        } else {
            match std::str::from_utf8(&line) {
                Ok(text) if text.trim().is_empty() => continue,
                Ok(text) => server.handle_line(text.trim_end()).await,
                Err(_) => Some(error_response(
                    Value::Null,
                    &RpcError::parse("the line is not UTF-8"),
                )),
            }
        };
        for n in server.take_notifications() {
            write_value(&mut out, &n).await?;
        }
        if let Some(a) = answer {
            write_value(&mut out, &a).await?;
        }
    }
}

async fn write_value(out: &mut tokio::io::Stdout, value: &Value) -> anyhow::Result<()> {
    let mut bytes = serde_json::to_vec(value)?;
    bytes.push(b'\n');
    out.write_all(&bytes).await?;
    out.flush().await?;
    Ok(())
}

/// Reads one line (without its newline) into `line`, keeping at most [`MAX_LINE`] bytes: a
/// longer line is read to its end and dropped. Returns (bytes read, whether it was too long);
/// 0 bytes read is the end of the input.
async fn read_bounded_line(
    input: &mut tokio::io::BufReader<tokio::io::Stdin>,
    line: &mut Vec<u8>,
) -> std::io::Result<(usize, bool)> {
    let mut total = 0;
    let mut too_long = false;
    loop {
        let buf = input.fill_buf().await?;
        if buf.is_empty() {
            return Ok((total, too_long));
        }
        let (chunk, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        if !too_long && line.len() + chunk.len() <= MAX_LINE {
            line.extend_from_slice(chunk);
        } else {
            too_long = true;
            line.clear();
        }
        let used = done.unwrap_or(buf.len());
        total += used;
        input.consume(used);
        if done.is_some() {
            return Ok((total, too_long));
        }
    }
}
