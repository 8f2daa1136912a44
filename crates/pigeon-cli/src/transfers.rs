//! File transfers beside the RPC core (issue #17): a thread of its own with its own
//! connection to the profile and its own relay sessions, so a 100 MiB upload over a censored
//! link never holds up the calls a front end makes. The core nudges it when a file is chosen
//! or a sync may have brought one; it reports each file's progress and end as events, the
//! newest per file, which the core sends with its next notifications.
//!
//! Two connections to one profile are safe: every change the profile makes is one SQLite
//! transaction, and nothing of it is kept in memory between transactions.

use crate::files_cmd::{TRANSFER_LIMIT, file_json};
use crate::user_cmd::CONNECT_TIMEOUT;
use pigeon_client::{Client, FileInfo, FileOutcome, Passphrase, Profile};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often the worker looks for work when nobody nudges it.
const IDLE_CHECK: Duration = Duration::from_secs(5);

/// How soon a transfer that could not go on is tried again, unless nudged.
const WAITING_RETRY: Duration = Duration::from_secs(30);

/// The newest event per file, waiting to go out.
type Events = Arc<Mutex<BTreeMap<i64, Value>>>;

/// The transfer thread of one open profile; it ends when this is dropped.
pub(crate) struct Transfers {
    nudge: std::sync::mpsc::SyncSender<()>,
    events: Events,
}

impl Transfers {
    /// Starts the worker on the profile in `dir`.
    ///
    /// # Errors
    /// When the thread cannot be made.
    pub(crate) fn start(dir: PathBuf, passphrase: Passphrase) -> anyhow::Result<Self> {
        let (nudge, nudged) = std::sync::mpsc::sync_channel::<()>(1);
        let events: Events = Arc::default();
        let out = Arc::clone(&events);
        std::thread::Builder::new()
            .name("pigeon-transfers".to_owned())
            .spawn(move || work(&dir, &passphrase, &nudged, &out))?;
        Ok(Self { nudge, events })
    }

    /// Asks the worker to look for work now.
    pub(crate) fn nudge(&self) {
        // A full channel already holds a nudge.
        let _ = self.nudge.try_send(());
    }

    /// The events since the last call, oldest file first.
    pub(crate) fn take_events(&self) -> Vec<Value> {
        self.events
            .lock()
            .map(|mut e| std::mem::take(&mut *e).into_values().collect())
            .unwrap_or_default()
    }
}

/// An event about a file: its state, with the conversation it is in.
pub(crate) fn file_event(profile: &Profile, f: &FileInfo) -> Value {
    let conversation = profile.conversation_label(f.group).unwrap_or_default();
    json!({
        "jsonrpc": "2.0",
        "method": "event",
        "params": { "kind": "file", "conversation": conversation, "file": file_json(f) },
    })
}

fn work(
    dir: &std::path::Path,
    passphrase: &Passphrase,
    nudged: &std::sync::mpsc::Receiver<()>,
    events: &Events,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::warn!(error = %e, "file transfers cannot start");
            return;
        }
    };
    let profile = match Profile::open(dir, passphrase) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "file transfers cannot open the profile");
            return;
        }
    };
    let mut client = Client::new(profile, CONNECT_TIMEOUT);
    loop {
        let mut progress = |p: &pigeon_client::FileProgress| {
            if let Ok(mut e) = events.lock() {
                e.insert(
                    p.id,
                    json!({
                        "jsonrpc": "2.0",
                        "method": "event",
                        "params": {
                            "kind": "file_progress", "id": p.id, "outgoing": p.outgoing,
                            "done": p.done, "size": p.total,
                        },
                    }),
                );
            }
        };
        let mut wait = IDLE_CHECK;
        match runtime.block_on(client.transfer_files(TRANSFER_LIMIT, &mut progress)) {
            Ok(outcomes) => {
                if outcomes
                    .iter()
                    .any(|o| matches!(o, FileOutcome::Waiting { .. }))
                {
                    // A relay that cannot be reached now is tried again less often.
                    wait = WAITING_RETRY;
                }
                for outcome in outcomes {
                    let id = match &outcome {
                        FileOutcome::Sent(f) | FileOutcome::Received(f) => f.id,
                        FileOutcome::Failed { id, .. } | FileOutcome::Waiting { id, .. } => *id,
                        _ => continue,
                    };
                    if let Ok(f) = client.profile().file(id)
                        && let Ok(mut e) = events.lock()
                    {
                        e.insert(id, file_event(client.profile(), &f));
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "file transfers failed"),
        }
        match nudged.recv_timeout(wait) {
            Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}
