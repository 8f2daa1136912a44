//! Moving files (issue #17): uploads and downloads of sealed chunks, each over a relay
//! session of its own so a 100 MiB file never holds up the conversation's messages. The
//! profile records progress as the relay confirms chunks (uploads) and as chunks are durably
//! written here (downloads); a lost connection, a freeze or a `kill -9` costs at most the
//! chunks in flight, and the next run carries on from the record.

use super::{Client, Error, blocking};
use crate::attachment::Layout;
use crate::network::NetworkId;
use crate::profile::{FileInfo, PendingDownload, PendingUpload};
use crate::relay::{ClientError, Event};
use pigeon_proto::auth;
use pigeon_wire::ErrorCode;
use pigeon_wire::msg::{self, MailboxId, request, response};
use std::collections::VecDeque;
use std::os::unix::fs::FileExt as _;
use std::time::Duration;

/// Chunks posted before the first answer is awaited.
const WINDOW: usize = 16;
/// Record an upload's or download's progress at least every this many chunks.
const RECORD_EVERY: u64 = 32;
/// How long one chunk's answer, or the next push of a download, may take.
const CHUNK_PATIENCE: Duration = Duration::from_secs(45);
/// Sessions one transfer may open (each after the last was lost) in one call.
const MAX_SESSIONS: u32 = 12;

/// How far a transfer is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileProgress {
    /// The file's number.
    pub id: i64,
    /// Its name (safe to show).
    pub name: String,
    /// Going out.
    pub outgoing: bool,
    /// Bytes done.
    pub done: u64,
    /// Bytes in all.
    pub total: u64,
}

/// How one transfer ended in a call to [`Client::transfer_files`].
#[derive(Debug)]
#[non_exhaustive]
pub enum FileOutcome {
    /// On the relay whole, and its message is on its way.
    Sent(FileInfo),
    /// Here whole and checked.
    Received(FileInfo),
    /// It cannot be had (the relay lost it, it was forged): recorded as failed.
    Failed {
        /// The file's number.
        id: i64,
        /// Why, for people.
        why: String,
    },
    /// Not finished in this call (the relay cannot be reached now, time ran out): the next
    /// call goes on from where this one stopped.
    Waiting {
        /// The file's number.
        id: i64,
        /// Why, for people.
        why: String,
    },
}

/// Why one pass of a transfer stopped.
enum Stop {
    /// Worth another session (the connection was lost, the relay asked to wait).
    Retry(String, Option<Duration>),
    /// Not worth another try in this call.
    Wait(String),
    /// Never worth another try.
    Fail(String),
}

impl From<ClientError> for Stop {
    fn from(e: ClientError) -> Self {
        match &e {
            ClientError::Refused {
                retry_after: Some(wait),
                ..
            } => Self::Retry(e.to_string(), Some(*wait)),
            ClientError::Refused {
                code: ErrorCode::NoSuchMailbox,
                ..
            } => Self::Fail(
                "the relay no longer has the file (it expired, or was never completed)".to_owned(),
            ),
            ClientError::Refused { code, .. } if code.kind() == pigeon_wire::ErrorKind::Refused => {
                Self::Retry(e.to_string(), Some(Duration::from_secs(1)))
            }
            ClientError::Lost(_) | ClientError::Handshake(_) => Self::Retry(e.to_string(), None),
            _ => Self::Wait(e.to_string()),
        }
    }
}

fn io_stop(doing: &str) -> impl FnOnce(std::io::Error) -> Stop + '_ {
    move |e| Stop::Wait(format!("{doing}: {e}"))
}

impl Client {
    /// Chooses the file at `path` to send to `to` (a contact's name, else a group's, as
    /// `pigeon send` reads it) under `name` (its own when `None`) with `caption`: sealed into
    /// the profile and in the transcript at once. [`Client::transfer_files`] uploads it and
    /// then sends its message.
    ///
    /// # Errors
    /// For an unknown name, a file that cannot be read, is empty or is over 100 MiB.
    pub fn attach(
        &self,
        to: &str,
        path: &std::path::Path,
        name: Option<&str>,
        caption: &str,
        kind: Option<pigeon_e2ee::content::AttachmentKind>,
    ) -> Result<(crate::GroupMessage, FileInfo), Error> {
        let group = self.profile.conversation_or_group_contact_first(to)?;
        Ok(blocking(|| match name {
            Some(name) => self
                .profile
                .prepare_file_named(group, path, name, caption, kind),
            None => self.profile.prepare_file(group, path, caption, kind),
        })?)
    }

    /// Carries on with every upload and download this profile has, one after the other,
    /// until each is done or `limit` has passed; tells `progress` as bytes move. The
    /// messages of finished uploads are sent before it returns.
    ///
    /// # Errors
    /// Profile failures; a transfer's own failures are its [`FileOutcome`].
    pub async fn transfer_files(
        &mut self,
        limit: Duration,
        progress: &mut (dyn FnMut(&FileProgress) + Send),
    ) -> Result<Vec<FileOutcome>, Error> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut outcomes = Vec::new();
        let uploads = blocking(|| self.profile.pending_uploads())?;
        let mut sent_any = false;
        for up in uploads {
            let id = up.id;
            let outcome = match self.upload(&up, deadline, progress).await {
                Ok(()) => {
                    blocking(|| self.profile.upload_sent(id))?;
                    sent_any = true;
                    FileOutcome::Sent(blocking(|| self.profile.file(id))?)
                }
                Err(Stop::Fail(why)) => {
                    blocking(|| self.profile.file_failed(id, &why))?;
                    FileOutcome::Failed { id, why }
                }
                Err(Stop::Retry(why, _) | Stop::Wait(why)) => FileOutcome::Waiting { id, why },
            };
            outcomes.push(outcome);
        }
        if sent_any {
            self.flush(true).await?;
        }
        let downloads = blocking(|| self.profile.pending_downloads())?;
        for down in downloads {
            let id = down.id;
            let outcome = match self.download(down, deadline, progress).await {
                Ok(()) => match blocking(|| self.profile.download_complete(id)) {
                    Ok(info) => FileOutcome::Received(info),
                    Err(crate::ProfileError::Invalid(why)) => FileOutcome::Failed { id, why },
                    Err(e) => return Err(e.into()),
                },
                Err(Stop::Fail(why)) => {
                    blocking(|| self.profile.file_failed(id, &why))?;
                    FileOutcome::Failed { id, why }
                }
                Err(Stop::Retry(why, _) | Stop::Wait(why)) => FileOutcome::Waiting { id, why },
            };
            outcomes.push(outcome);
        }
        // What the dialer learned on the way (a freeze's cap) is kept for the next run.
        self.save_learned();
        Ok(outcomes)
    }

    /// Runs `pass` in fresh sessions until it finishes, fails for good, or the sessions or
    /// the time run out.
    async fn passes<F>(&mut self, deadline: tokio::time::Instant, mut pass: F) -> Result<(), Stop>
    where
        F: AsyncFnMut(&mut Self) -> Result<(), Stop>,
    {
        let mut last = String::new();
        for attempt in 0..MAX_SESSIONS {
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            match pass(self).await {
                Ok(()) => return Ok(()),
                Err(Stop::Retry(why, wait)) => {
                    tracing::debug!(attempt, %why, "a file transfer's session ended; going on");
                    last = why;
                    let wait = wait.unwrap_or(Duration::from_millis(200 << attempt.min(5)));
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    tokio::time::sleep(wait.min(left)).await;
                }
                Err(other) => return Err(other),
            }
        }
        Err(Stop::Wait(if last.is_empty() {
            "time ran out".to_owned()
        } else {
            last
        }))
    }

    async fn transfer_session(
        &mut self,
        relay: &pigeon_transport::RelayLink,
    ) -> Result<crate::RelayConnection, Stop> {
        let (conn, _, _) = self
            .open(relay, NetworkId::current())
            .await
            .map_err(|e| Stop::Wait(format!("the file's relay cannot be reached: {e}")))?;
        Ok(conn)
    }

    async fn upload(
        &mut self,
        up: &PendingUpload,
        deadline: tokio::time::Instant,
        progress: &mut (dyn FnMut(&FileProgress) + Send),
    ) -> Result<(), Stop> {
        let mut done = up.done;
        self.passes(deadline, async |this| {
            let conn = this.transfer_session(&up.relay).await?;
            let owner = up.secrets.owner();
            let blob = up.secrets.blob_id();
            let cap = up.secrets.read_cap();
            let chunks = up.layout.chunks();
            match conn.create_log(&owner, &blob, auth::cap_hash(&cap)).await {
                Ok(()) => {}
                // Made and sealed in an earlier run that stopped before recording it.
                Err(ClientError::Refused {
                    code: ErrorCode::MailboxExists,
                    ..
                }) if done == chunks => {}
                Err(e) => return Err(e.into()),
            }
            let file = std::fs::File::open(&up.path).map_err(io_stop("reading the sealed file"))?;
            let mut in_flight: VecDeque<(u64, tokio::sync::oneshot::Receiver<response::Result>)> =
                VecDeque::new();
            let mut next = done;
            let mut recorded = done;
            while done < chunks {
                while next < chunks && in_flight.len() < WINDOW {
                    let len = up.layout.plain_len(next) + crate::attachment::TAG_LEN;
                    let mut sealed = vec![0; len];
                    file.read_exact_at(&mut sealed, up.layout.sealed_offset(next))
                        .map_err(io_stop("reading the sealed file"))?;
                    let body = request::Body::Send(msg::Send {
                        mailbox_id: blob.0.to_vec(),
                        sender_cap: cap.to_vec(),
                        message_id: up.secrets.chunk_message_id(next).to_vec(),
                        ciphertext: Layout::to_relay(next, &sealed),
                        first_attempt: false,
                    });
                    in_flight.push_back((next, conn.submit(body).await?));
                    next += 1;
                }
                let Some((index, answer)) = in_flight.pop_front() else {
                    break;
                };
                match tokio::time::timeout(CHUNK_PATIENCE, answer).await {
                    Ok(Ok(response::Result::Sent(_))) => {
                        done = index + 1;
                        progress(&FileProgress {
                            id: up.id,
                            name: up.name.clone(),
                            outgoing: true,
                            done: (done * u64::from(up.layout.chunk_size)).min(up.layout.size),
                            total: up.layout.size,
                        });
                        if done - recorded >= RECORD_EVERY || done == chunks {
                            blocking(|| this.profile.upload_progress(up.id, done))
                                .map_err(|e| Stop::Wait(e.to_string()))?;
                            recorded = done;
                        }
                    }
                    Ok(Ok(response::Result::Error(e))) => {
                        let err = ClientError::Refused {
                            code: e.error_code(),
                            retry_after: e
                                .retry_after_ms
                                .map(|ms| Duration::from_millis(u64::from(ms))),
                            message: e.message,
                        };
                        blocking(|| this.profile.upload_progress(up.id, done))
                            .map_err(|e| Stop::Wait(e.to_string()))?;
                        return Err(err.into());
                    }
                    Ok(Ok(_)) => return Err(Stop::Wait("the relay answered a post oddly".into())),
                    Ok(Err(_)) | Err(_) => {
                        blocking(|| this.profile.upload_progress(up.id, done))
                            .map_err(|e| Stop::Wait(e.to_string()))?;
                        return Err(Stop::Retry(
                            "the connection was lost while the file was going up".into(),
                            None,
                        ));
                    }
                }
            }
            // Every chunk is durable: retire the capability readers get, so it posts nothing.
            conn.update_log(
                &owner,
                &blob,
                None,
                auth::cap_hash(&up.secrets.sealed_cap()),
            )
            .await?;
            Ok(())
        })
        .await
    }

    async fn download(
        &mut self,
        mut down: PendingDownload,
        deadline: tokio::time::Instant,
        progress: &mut (dyn FnMut(&FileProgress) + Send),
    ) -> Result<(), Stop> {
        if let Some(dir) = down.path.parent() {
            std::fs::create_dir_all(dir).map_err(io_stop("making the files directory"))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&down.path)
            .map_err(io_stop("writing the file"))?;
        file.set_len(down.layout.sealed_size())
            .map_err(io_stop("writing the file"))?;
        let total = down.layout.size;
        let chunks = down.layout.chunks();
        self.passes(deadline, async |this| {
            if down.received.complete() {
                return Ok(());
            }
            let mut conn = this.transfer_session(&down.relay).await?;
            let mut events = conn.take_events();
            let blob = MailboxId(down.blob_id);
            let waiting = conn.subscribe_log(&blob, &down.read_cap, down.cursor).await?;
            if waiting == 0 {
                return Err(Stop::Fail(format!(
                    "the relay holds {} of the file's {chunks} chunks and no more (it expired, \
                     or the sender never finished it)",
                    down.received.count()
                )));
            }
            let mut seen = 0u64;
            let mut since_record = 0u64;
            while !down.received.complete() {
                let event = match tokio::time::timeout(CHUNK_PATIENCE, events.recv()).await {
                    Ok(Some(event)) => event,
                    Ok(None) | Err(_) => {
                        return Err(Stop::Retry(
                            "the connection was lost while the file was coming".into(),
                            None,
                        ));
                    }
                };
                let push = match event {
                    Event::Push(push) if push.mailbox_id == blob.0 => push,
                    Event::Push(_) => continue,
                    Event::Closed(why) => {
                        return Err(Stop::Retry(format!("the relay closed: {why:?}"), None));
                    }
                };
                let mut seqs = Vec::with_capacity(push.deliveries.len());
                for d in &push.deliveries {
                    seqs.push(d.seq);
                    seen += 1;
                    match down.layout.from_relay(&down.key, &d.ciphertext) {
                        Ok((index, sealed)) => {
                            if !down.received.mark(index) {
                                continue;
                            }
                            file.write_all_at(sealed, down.layout.sealed_offset(index))
                                .map_err(io_stop("writing the file"))?;
                            since_record += 1;
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "a file's log held something that is not its chunk");
                        }
                    }
                }
                if let Some(last) = push.deliveries.last() {
                    down.cursor = down.cursor.max(last.seq);
                }
                if since_record >= RECORD_EVERY || down.received.complete() {
                    file.sync_data().map_err(io_stop("writing the file"))?;
                    blocking(|| this.profile.download_progress(down.id, down.cursor, &down.received))
                        .map_err(|e| Stop::Wait(e.to_string()))?;
                    since_record = 0;
                }
                progress(&FileProgress {
                    id: down.id,
                    name: down.name.clone(),
                    outgoing: false,
                    done: (down.received.count() * u64::from(down.layout.chunk_size)).min(total),
                    total,
                });
                if !seqs.is_empty() {
                    // Acks free the push window of a log; they delete nothing.
                    conn.ack(&blob, seqs).await?;
                }
                if seen >= waiting && !down.received.complete() {
                    file.sync_data().map_err(io_stop("writing the file"))?;
                    blocking(|| this.profile.download_progress(down.id, down.cursor, &down.received))
                        .map_err(|e| Stop::Wait(e.to_string()))?;
                    return Err(Stop::Fail(format!(
                        "the relay holds {} of the file's {chunks} chunks and no more (it \
                         expired, or the sender never finished it)",
                        down.received.count()
                    )));
                }
            }
            Ok(())
        })
        // A pass ends well only once every chunk is here, synced and recorded.
        .await
    }
}
