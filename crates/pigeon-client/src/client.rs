//! The client: a [`Profile`] plus connections to the relays it needs.
//!
//! Each contact may live on a different relay. The client opens one session per relay on
//! demand, merges their pushes into one stream, hands each delivery to the profile (one
//! transaction each) and only then acknowledges it, so a crash anywhere means a redelivery the
//! profile recognises, never a lost or doubled message. Outgoing ciphertext is written to the
//! outbox before any network IO; [`Client::flush`] posts it in order per destination and
//! drops each item only once the relay holds it durably, backing off on failure.

use crate::device_link::{DeviceLink, DeviceLinkError};
use crate::invite::{Invite, InviteError};
use crate::network::NetworkId;
use crate::profile::{
    Contact, GroupChange, GroupInfo, GroupMessage, Handled, Message, OutboxItem, Profile,
    ProfileError, now_ms, parse_stored_relay,
};
use crate::relay::{ClientError, CloseReason, Event, RouteProgress};
use crate::{OwnedMailbox, RelayConnection};
use pigeon_e2ee::Suite;
use pigeon_transport::RelayLink;
use pigeon_wire::msg::{self, MailboxId};
use pigeon_wire::{ErrorCode, ErrorKind};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::sync::mpsc;

mod files;

pub use files::{FileOutcome, FileProgress};

/// Longest wait before retrying an outbox item.
const MAX_BACKOFF_MS: i64 = 300_000;

/// Why a client operation failed, in words for people.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The profile failed.
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// The invitation link is unusable.
    #[error("this invitation cannot be used: {0}")]
    Invite(#[from] InviteError),
    /// A relay could not be reached or refused.
    #[error("{}", relay_sentence(whose, source))]
    Relay {
        /// Whose relay, for people ("your relay", "alice's relay").
        whose: String,
        /// What went wrong.
        #[source]
        source: ClientError,
    },
    /// The invitation's key package is gone.
    #[error(
        "this invitation was already used or has expired: ask {0} for a new one (each invitation works once)"
    )]
    InviteUsed(String),
    /// A group invitation was given where an invitation to a conversation belongs (or the
    /// other way round).
    #[error("{0}")]
    WrongInvite(&'static str),
    /// The device link is unusable.
    #[error("this device link cannot be used: {0}")]
    DeviceLink(#[from] DeviceLinkError),
}

/// A request to join a group, on its way to the inviter, whose device adds this one when it
/// next reads its messages.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    /// The group's name.
    pub group: String,
    /// Who invited.
    pub inviter: String,
    /// The request is on the relay (else it is queued until the relay is reachable).
    pub sent: bool,
}

impl std::fmt::Display for JoinRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "asked to join {}; you are in once {}'s device has read the request (`pigeon read` shows it)",
            self.group, self.inviter
        )?;
        if !self.sent {
            f.write_str(" — the request is queued and goes out when the relay is reachable")?;
        }
        Ok(())
    }
}

fn relay_sentence(whose: &str, e: &ClientError) -> String {
    match e {
        // `last` says why each route failed, and what that points at.
        ClientError::Unreachable { tried, last, .. } => {
            format!("could not reach {whose} through any route (tried {tried}): {last}")
        }
        other => format!("{whose}: {other}"),
    }
}

impl Error {
    /// Who is at fault.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Profile(e) => e.kind(),
            Self::Invite(_) => ErrorKind::BadInput,
            Self::Relay { source, .. } => source.kind(),
            Self::InviteUsed(_) => ErrorKind::Peer,
            Self::WrongInvite(_) | Self::DeviceLink(_) => ErrorKind::BadInput,
        }
    }
}

/// Something that happened, for a user interface.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ClientEvent {
    /// A message arrived.
    Message(Message),
    /// Someone accepted an invitation.
    NewContact(Contact),
    /// A contact introduced itself.
    Introduced(Contact),
    /// A contact confirmed receipt of messages.
    Delivered {
        /// The contact.
        contact_id: crate::ContactId,
        /// How many messages.
        count: usize,
    },
    /// A contact refreshed the conversation's keys.
    Rekeyed {
        /// The contact.
        contact_id: crate::ContactId,
        /// The new epoch.
        epoch: u64,
    },
    /// A line in a group's transcript (a message or a notice).
    Group(GroupMessage),
    /// Something to tell the person that is neither a message nor an error ("alice added
    /// you to a group; joining").
    Notice(String),
    /// This device joined a group.
    JoinedGroup(GroupInfo),
    /// A message was refused (tampered, replayed, malformed) and dropped.
    Dropped(String),
    /// A relay session ended; call [`Client::subscribe_all`] to reconnect.
    Disconnected {
        /// Why.
        reason: String,
    },
}

/// What [`Client::flush`] did.
#[derive(Debug, Default)]
pub struct FlushReport {
    /// Items the relays now hold.
    pub sent: usize,
    /// Items still waiting.
    pub waiting: usize,
    /// What the relays held: (mailbox, ciphertext bytes) of each item sent.
    pub stored: Vec<([u8; 32], usize)>,
    /// Why items are waiting, one sentence per destination that failed.
    pub errors: Vec<String>,
    /// Destinations the relay says do not exist (deleted, expired, or never there).
    pub gone: Vec<[u8; 32]>,
}

struct Session {
    /// Which of the sessions with this relay it is: events of an earlier one (a `Closed` its
    /// end sends when it is dropped) must not end this one.
    generation: u64,
    link: RelayLink,
    conn: RelayConnection,
    subscribed: BTreeSet<[u8; 32]>,
    /// Group logs subscribed on this session, with the capability used.
    logs: BTreeMap<[u8; 32], [u8; 32]>,
}

/// Where a client reports its route searches: which relay, what happened.
pub type ProgressSink = Box<dyn Fn(&RelayLink, RouteProgress) + Send + Sync>;

/// How long one of this profile's relays is tried alone before the next starts beside it
/// (when making something new; see `Client::home_relay`).
pub const RELAY_STAGGER: Duration = Duration::from_secs(1);

/// How long a relay that holds only copies of logs whose other copy answered is waited for
/// (a blocked home relay must not hold up reading and posting through a log's mirror).
pub const MIRROR_PATIENCE: Duration = Duration::from_secs(1);

/// How long making a new conversation's mirror on a relay may take before that relay is
/// skipped.
const MIRROR_SETUP: Duration = Duration::from_secs(3);

/// A profile with its relay sessions.
pub struct Client {
    profile: Profile,
    /// This client's dialer and route memory (nothing is shared with other clients).
    connector: Result<crate::relay::Connector, ClientError>,
    sessions: BTreeMap<[u8; 32], Session>,
    events_tx: mpsc::UnboundedSender<([u8; 32], u64, Event)>,
    events_rx: mpsc::UnboundedReceiver<([u8; 32], u64, Event)>,
    /// The generation of the newest session.
    generation: u64,
    /// Deliveries still expected per (relay key, mailbox) since subscribing (a log with a
    /// mirror is read on two relays).
    waiting: BTreeMap<([u8; 32], [u8; 32]), u64>,
    timeout: Duration,
    /// The learned download caps as last kept in the profile.
    saved_caps: BTreeMap<String, u32>,
    /// Told about every route attempt (`pigeon connect`, interfaces); silent by default.
    progress: ProgressSink,
    /// The route each relay session went by.
    routes: BTreeMap<[u8; 32], String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for `profile`; connects lazily, each attempt bounded by `timeout`.
    pub fn new(profile: Profile, timeout: Duration) -> Self {
        // Download caps this profile learned in earlier runs go to the process's dialer.
        let saved_caps = profile.route_caps().unwrap_or_default();
        let mut connector = crate::relay::Connector::new();
        if let Ok(c) = &mut connector {
            for (route, cap) in &saved_caps {
                c.transports().learn(route, *cap);
            }
        }
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let mut client = Self {
            profile,
            connector,
            sessions: BTreeMap::new(),
            events_tx,
            events_rx,
            generation: 0,
            waiting: BTreeMap::new(),
            timeout,
            saved_caps,
            progress: Box::new(|_, _| {}),
            routes: BTreeMap::new(),
        };
        // The proxies this profile goes through; with one marked `always`, relays are reached
        // only through proxies (a direct attempt would show the censor whom it talks to).
        client.reload_proxies();
        client
    }

    /// The profile.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    async fn session(&mut self, link: &RelayLink, whose: &str) -> Result<&Session, Error> {
        let key = *link.relay_key();
        if !self.sessions.contains_key(&key) {
            let network = NetworkId::current();
            let opened = self.open(link, network).await;
            let (conn, won, best) = opened.map_err(|source| Error::Relay {
                whose: whose.to_owned(),
                source,
            })?;
            self.adopt(link, network, best, conn, won);
        }
        self.sessions.get(&key).ok_or_else(|| Error::Relay {
            whose: whose.to_owned(),
            source: ClientError::Lost("the session closed".to_owned()),
        })
    }

    /// Searches the routes to `link`, the one that last worked on `network` first; returns the
    /// connection, the attempt that won and the one remembered before.
    async fn open(
        &self,
        link: &RelayLink,
        network: NetworkId,
    ) -> Result<(RelayConnection, crate::relay::Won, Option<String>), ClientError> {
        let connector = self
            .connector
            .as_ref()
            .map_err(|e| ClientError::Unreachable {
                tried: "none".into(),
                last: e.to_string(),
                kind: ErrorKind::Internal,
            })?;
        let best = self
            .profile
            .route_worked(&network, link.relay_key())
            .unwrap_or_else(|e| {
                tracing::debug!(error = %e, "reading route memory failed");
                None
            });
        let progress = &self.progress;
        let report = |p: RouteProgress| progress(link, p);
        let (conn, won) = connector
            .connect_reporting(link, self.timeout, best.as_deref(), &report)
            .await?;
        Ok((conn, won, best))
    }

    /// Keeps a new session with `link`: remembers the winning route for `network` and
    /// forwards the session's events.
    fn adopt(
        &mut self,
        link: &RelayLink,
        network: NetworkId,
        best: Option<String>,
        mut conn: RelayConnection,
        won: crate::relay::Won,
    ) {
        let key = *link.relay_key();
        if best.as_deref() != Some(won.key.as_str())
            && let Err(e) = self.profile.save_route_worked(&network, &key, &won.key)
        {
            tracing::debug!(error = %e, "keeping route memory failed");
        }
        self.routes.insert(key, won.route);
        let mut events = conn.take_events();
        let tx = self.events_tx.clone();
        self.generation += 1;
        let generation = self.generation;
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                if tx.send((key, generation, event)).is_err() {
                    break;
                }
            }
        });
        self.sessions.insert(
            key,
            Session {
                generation,
                link: link.clone(),
                conn,
                subscribed: BTreeSet::new(),
                logs: BTreeMap::new(),
            },
        );
    }

    /// The first of this profile's relays ([`Profile::relays`], in its order of preference)
    /// that answers, for making something new there: one with a session open answers at once;
    /// otherwise each relay's search starts [`RELAY_STAGGER`] after the one before (at once
    /// when that one failed), and the first handshake wins. A blocked first relay then costs a
    /// second, not a timeout.
    ///
    /// # Errors
    /// [`Error::Relay`] with the first relay's failure when none answers.
    async fn home_relay(&mut self) -> Result<RelayLink, Error> {
        let relays = self.profile.relays()?;
        if let Some(open) = relays
            .iter()
            .find(|l| self.sessions.contains_key(l.relay_key()))
        {
            return Ok(open.clone());
        }
        let network = NetworkId::current();
        let mut errors: Vec<(usize, ClientError)> = Vec::new();
        let outcome = {
            let this = &*self;
            let relays = &relays;
            crate::relay::first_success(
                0..relays.len(),
                RELAY_STAGGER,
                |i| async move {
                    this.open(&relays[i], network)
                        .await
                        .map(|opened| (i, opened))
                        .map_err(|e| (i, e))
                },
                |failure| errors.push(failure),
            )
            .await
        };
        errors.sort_by_key(|(i, _)| *i);
        let outcome = outcome.ok_or_else(|| errors.into_iter().next().map(|(_, e)| e));
        match outcome {
            Ok((i, (conn, won, best))) => {
                let link = relays[i].clone();
                self.adopt(&link, network, best, conn, won);
                Ok(link)
            }
            Err(first) => Err(Error::Relay {
                whose: "your relay".to_owned(),
                source: first.unwrap_or_else(|| ClientError::Unreachable {
                    tried: "none".into(),
                    last: "the profile has no relay".into(),
                    kind: ErrorKind::BadInput,
                }),
            }),
        }
    }

    fn relay_failed(&mut self, link: &RelayLink, e: &ClientError) {
        // A session that made its quota of mailboxes is spent for making more (the relay says
        // to connect again; a refusal of the relay's own rate says when to retry instead).
        let spent = matches!(
            e,
            ClientError::Refused {
                code: ErrorCode::QuotaExceeded,
                retry_after: None,
                ..
            }
        );
        if spent || matches!(e, ClientError::Lost(_) | ClientError::Unreachable { .. }) {
            self.drop_session(*link.relay_key());
        }
    }

    /// Forgets the session with the relay whose key is `key`, and the deliveries it announced:
    /// nothing more comes on it, so nothing is waited for (a `sync` would otherwise wait out
    /// its whole limit for a backlog that can no longer arrive).
    fn drop_session(&mut self, key: [u8; 32]) {
        self.sessions.remove(&key);
        self.waiting.retain(|(relay, _), _| *relay != key);
    }

    /// Keeps the proxies an invitation carries (as ways to try after the direct routes), and
    /// goes through them from now on. A failure to keep them only loses that help.
    fn take_proxies(&mut self, invite: &Invite) {
        if invite.proxies.is_empty() {
            return;
        }
        for link in &invite.proxies {
            if let Err(e) = self.profile.add_proxy_if_new(link) {
                tracing::debug!(error = %e, "keeping an invitation's proxy failed");
            }
        }
        self.reload_proxies();
    }

    /// Hands the profile's proxies to the connector.
    fn reload_proxies(&mut self) {
        let saved = self.profile.proxies().unwrap_or_default();
        if let Ok(c) = &mut self.connector {
            c.set_proxies(crate::relay::Proxies {
                only: saved.iter().any(|p| p.always),
                routes: saved.into_iter().map(|p| p.link.route().clone()).collect(),
            });
        }
    }

    /// Makes an invitation on this profile's relay and returns its link.
    ///
    /// # Errors
    /// When the relay cannot be reached or refuses.
    pub async fn invite(&mut self) -> Result<String, Error> {
        let home = self.home_relay().await?;
        let prepared = self.profile.prepare_invite(&home)?;
        let invite = &prepared.invite;
        let relay = invite.relay.clone();
        let result: Result<(), ClientError> = async {
            let session = self
                .session(&relay, "your relay")
                .await
                .map_err(|e| match e {
                    Error::Relay { source, .. } => source,
                    other => ClientError::Lost(other.to_string()),
                })?;
            let mailbox = MailboxId(invite.mailbox_id);
            session
                .conn
                .create_mailbox(
                    &prepared.mailbox_key,
                    &mailbox,
                    pigeon_proto::auth::cap_hash(&invite.sender_cap),
                )
                .await?;
            for (offer, kp) in invite.offers.iter().zip(&prepared.key_packages) {
                session
                    .conn
                    .publish_key_packages(
                        &prepared.slot_key,
                        &offer.slot_id,
                        vec![kp.clone()],
                        None,
                    )
                    .await?;
            }
            Ok(())
        }
        .await;
        if let Err(source) = result {
            self.relay_failed(&relay, &source);
            self.profile.cancel_invite(&prepared)?;
            return Err(Error::Relay {
                whose: "your relay".to_owned(),
                source,
            });
        }
        Ok(invite.to_link()?)
    }

    /// Accepts an invitation (preferring X-Wing) and sends the inviter the first message.
    /// `local_name` names the contact here instead of the name the invitation carries.
    ///
    /// # Errors
    /// For an unusable link, an unreachable relay, or a used invitation.
    pub async fn accept(
        &mut self,
        link: &str,
        local_name: Option<&str>,
    ) -> Result<(Contact, FlushReport), Error> {
        self.accept_with(link, local_name, &Suite::PREFERENCE).await
    }

    /// As [`Self::accept`], speaking only `suites` (most preferred first).
    ///
    /// # Errors
    /// As [`Self::accept`].
    pub async fn accept_with(
        &mut self,
        link: &str,
        local_name: Option<&str>,
        suites: &[Suite],
    ) -> Result<(Contact, FlushReport), Error> {
        let invite = Invite::parse(link)?;
        self.take_proxies(&invite);
        if invite.group.is_some() {
            return Err(Error::WrongInvite(
                "this is an invitation to a group: join it with `Client::join_group` (`pigeon accept` does)",
            ));
        }
        let offer = suites
            .iter()
            .find_map(|s| invite.offers.iter().find(|o| o.suite == *s))
            .ok_or(InviteError::NoSuite)?
            .clone();
        let whose = format!("{}'s relay", invite.name);
        let key_package = {
            let session = self.session(&invite.relay, &whose).await?;
            match session.conn.fetch_key_package(&offer.slot_id).await {
                Ok(kp) => kp.data,
                Err(ClientError::Refused {
                    code: ErrorCode::NoKeyPackage,
                    ..
                }) => return Err(Error::InviteUsed(invite.name.clone())),
                Err(source) => {
                    self.relay_failed(&invite.relay.clone(), &source);
                    return Err(Error::Relay { whose, source });
                }
            }
        };
        // The conversation is a group of two on a log on this profile's first relay that
        // answers.
        let relay = self.home_relay().await?;
        let log = OwnedMailbox::generate().map_err(|e| ProfileError::Random(e.to_string()))?;
        self.on_own_relay(&relay, async |conn| {
            conn.create_log(&log.key, &log.id, log.cap_hash()).await
        })
        .await?;
        let contact = blocking(|| {
            self.profile.start_conversation(
                &invite,
                offer.suite,
                &key_package,
                &log,
                &relay,
                local_name,
            )
        })?;
        self.add_mirror(&relay, &log).await;
        let report = self.flush(true).await?;
        Ok((contact, report))
    }

    /// Encrypts and queues `text` for the contact called `contact`, then tries to send
    /// everything queued.
    ///
    /// # Errors
    /// For an unknown contact or bad text; relay failures only show in the report (the
    /// message stays queued).
    pub async fn send(
        &mut self,
        contact: &str,
        text: &str,
    ) -> Result<(Message, FlushReport), Error> {
        let contact = self.profile.find_contact(contact)?;
        let message = blocking(|| self.profile.compose(contact.id, text))?;
        let report = self.flush(true).await?;
        Ok((message, report))
    }

    /// Creates a group on this profile's relay: a log there, and an MLS group with this
    /// device as its only member and admin.
    ///
    /// # Errors
    /// When the relay cannot be reached or refuses; for a bad name.
    pub async fn create_group(&mut self, name: &str) -> Result<GroupInfo, Error> {
        pigeon_e2ee::roster::check_group_name(name).map_err(ProfileError::Invalid)?;
        let relay = self.home_relay().await?;
        let log = OwnedMailbox::generate().map_err(|e| ProfileError::Random(e.to_string()))?;
        self.on_own_relay(&relay, async |conn| {
            conn.create_log(&log.key, &log.id, log.cap_hash()).await
        })
        .await?;
        let info = blocking(|| self.profile.create_group(name, &relay, &log))?;
        self.add_mirror(&relay, &log).await;
        Ok(info)
    }

    /// Gives a group's log (or a contact's conversation's) a mirror, or a new one, on `relay`:
    /// the log, with its current keys, made there, and announced in the log (admins only; in a
    /// conversation of two, both people are).
    ///
    /// # Errors
    /// For a member who is not an admin, an unknown group, or a relay that refuses.
    pub async fn mirror_group(
        &mut self,
        group: &str,
        relay: &RelayLink,
    ) -> Result<FlushReport, Error> {
        let id = self.profile.conversation_or_group(group)?;
        let (log_id, owner, cap, home) = self.profile.log_keys(id)?;
        if home.relay_key() == relay.relay_key() {
            return Err(ProfileError::Invalid(
                "that is the group's own relay; a mirror goes on another".to_owned(),
            )
            .into());
        }
        let id = MailboxId(log_id);
        self.on_own_relay(relay, async |conn| {
            conn.create_log(&owner, &id, pigeon_proto::auth::cap_hash(&cap))
                .await
        })
        .await?;
        blocking(|| self.profile.set_log_mirror(&log_id, Some(relay)))?;
        self.flush(true).await
    }

    /// Moves a group's (or a contact's conversation's) home to its mirror, for a home relay
    /// gone for everyone (admins only).
    ///
    /// # Errors
    /// For a member who is not an admin, or a group without a mirror.
    pub async fn move_group_home(&mut self, group: &str) -> Result<FlushReport, Error> {
        let id = self.profile.conversation_or_group(group)?;
        blocking(|| self.profile.move_home(id))?;
        self.flush(true).await
    }

    /// Gives a new conversation's log a mirror: the same log (id and keys) on the first other
    /// relay of this profile's that takes it, announced to the members in the log. With one
    /// relay, or no other answering, the log lives on its home relay alone: not an error.
    async fn add_mirror(&mut self, home: &RelayLink, log: &OwnedMailbox) -> Option<RelayLink> {
        let relays = self.profile.relays().ok()?;
        for relay in relays
            .into_iter()
            .filter(|r| r.relay_key() != home.relay_key())
        {
            // A relay that does not take it soon is skipped (it may be the blocked one): the
            // conversation is not held up for its mirror.
            let created = tokio::time::timeout(
                MIRROR_SETUP,
                self.on_own_relay(&relay, async |conn| {
                    conn.create_log(&log.key, &log.id, log.cap_hash()).await
                }),
            )
            .await
            .unwrap_or_else(|_| {
                Err(Error::Relay {
                    whose: "your relay".to_owned(),
                    source: ClientError::Lost(format!("no answer within {MIRROR_SETUP:?}")),
                })
            });
            match created {
                Ok(()) => match blocking(|| self.profile.set_log_mirror(&log.id.0, Some(&relay))) {
                    Ok(()) => {
                        let _ = self.flush(true).await;
                        return Some(relay);
                    }
                    Err(e) => {
                        tracing::info!(error = %e, "the log's mirror could not be recorded");
                        return None;
                    }
                },
                Err(e) => tracing::info!(error = %e, "a relay could not take the log's mirror"),
            }
        }
        None
    }

    /// Makes a one-time invitation link to a group (admins only).
    ///
    /// # Errors
    /// When the relay cannot be reached or refuses; for a member who is not an admin.
    pub async fn group_invite(&mut self, group: &str) -> Result<String, Error> {
        let info = self.profile.find_group(group)?;
        let home = self.home_relay().await?;
        let prepared = self.profile.prepare_group_invite(info.id, &home)?;
        let invite = &prepared.invite;
        let relay = invite.relay.clone();
        let result = self
            .on_own_relay(&relay, async |conn| {
                conn.create_mailbox(
                    &prepared.mailbox_key,
                    &MailboxId(invite.mailbox_id),
                    pigeon_proto::auth::cap_hash(&invite.sender_cap),
                )
                .await
            })
            .await;
        if let Err(e) = result {
            self.profile.cancel_group_invite(&prepared)?;
            return Err(e);
        }
        Ok(invite.to_link()?)
    }

    /// Makes a one-time link for a new device of this person (`pigeon devices link`): a
    /// mailbox on this profile's relay that the new device answers in. The new device gets the
    /// last `history_days` days of each conversation (0: none). The rest happens as
    /// the profile syncs; [`Profile::device_link_progress`] says where it stands.
    ///
    /// # Errors
    /// When the relay cannot be reached or refuses.
    pub async fn link_device(&mut self, history_days: u32) -> Result<DeviceLink, Error> {
        let home = self.home_relay().await?;
        if !self.profile.has_devices_group()? {
            // The group of this person's devices, handed to the new device with the rest: in
            // it, each device leaves key packages for the others, so that whichever starts or
            // joins a conversation adds them at once.
            let log = OwnedMailbox::generate().map_err(|e| ProfileError::Random(e.to_string()))?;
            self.on_own_relay(&home, async |conn| {
                conn.create_log(&log.key, &log.id, log.cap_hash()).await
            })
            .await?;
            blocking(|| self.profile.create_devices_group(&home, &log))?;
        }
        let prepared = self.profile.prepare_device_link(&home, history_days)?;
        let link = &prepared.link;
        let result = self
            .on_own_relay(&home, async |conn| {
                conn.create_mailbox(
                    &prepared.mailbox_key,
                    &MailboxId(link.mailbox_id),
                    pigeon_proto::auth::cap_hash(&link.sender_cap),
                )
                .await
            })
            .await;
        if let Err(e) = result {
            self.profile.cancel_device_link(&prepared)?;
            return Err(e);
        }
        Ok(prepared.link)
    }

    /// On a new device (a profile made for it, named from the link): answers a device link.
    /// The other device then hands over every conversation as the profile syncs;
    /// [`Profile::link_join_progress`] says where it stands.
    ///
    /// # Errors
    /// When the link's relay cannot be reached, or this profile followed a link before.
    pub async fn follow_device_link(&mut self, link: &DeviceLink) -> Result<FlushReport, Error> {
        let (reply, reply_relay) = self.new_inbox().await?;
        blocking(|| self.profile.follow_device_link(link, &reply, &reply_relay))?;
        let _ = self.subscribe_all().await;
        let report = self.flush(true).await?;
        if report.gone.contains(&link.mailbox_id) {
            return Err(Error::WrongInvite(
                "the device link was used or has expired: make a new one with `pigeon devices link`",
            ));
        }
        Ok(report)
    }

    /// Runs `request` on a session with this profile's relay `relay`; a failure is "your
    /// relay"'s, and a lost session is dropped so the next call reconnects.
    async fn on_own_relay<T>(
        &mut self,
        relay: &RelayLink,
        request: impl AsyncFn(&RelayConnection) -> Result<T, ClientError>,
    ) -> Result<T, Error> {
        // A session that made its quota of mailboxes is spent for making more: the relay says
        // to connect again, which the second attempt does.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let session = self.session(relay, "your relay").await?;
            match request(&session.conn).await {
                Ok(v) => return Ok(v),
                Err(source) => {
                    self.relay_failed(relay, &source);
                    let spent = matches!(
                        source,
                        ClientError::Refused {
                            code: ErrorCode::QuotaExceeded,
                            retry_after: None,
                            ..
                        }
                    );
                    if !spent || attempts >= 2 {
                        return Err(Error::Relay {
                            whose: "your relay".to_owned(),
                            source,
                        });
                    }
                }
            }
        }
    }

    /// A fresh mailbox of this profile's, created on its first relay that answers.
    async fn new_inbox(&mut self) -> Result<(OwnedMailbox, RelayLink), Error> {
        let own = self.home_relay().await?;
        let inbox = OwnedMailbox::generate().map_err(|e| ProfileError::Random(e.to_string()))?;
        self.on_own_relay(&own, async |conn| {
            conn.create_mailbox(&inbox.key, &inbox.id, inbox.cap_hash())
                .await
        })
        .await?;
        Ok((inbox, own))
    }

    /// Asks to join the group a group invitation link is for; the Welcome comes once an admin's
    /// device has read the request (`sync` picks it up).
    ///
    /// # Errors
    /// For an unusable or used link, a link to a 1:1 conversation, or an unreachable relay.
    pub async fn join_group(&mut self, link: &str) -> Result<JoinRequest, Error> {
        let invite = Invite::parse(link)?;
        self.take_proxies(&invite);
        if invite.group.is_none() {
            return Err(Error::WrongInvite(
                "this is an invitation to a conversation, not to a group: accept it with `Client::accept`",
            ));
        }
        self.join_invite(&invite).await
    }

    async fn join_invite(&mut self, invite: &Invite) -> Result<JoinRequest, Error> {
        let (reply, reply_relay) = self.new_inbox().await?;
        let group = blocking(|| {
            self.profile
                .request_group_join(invite, &reply, &reply_relay)
        })?;
        let report = self.flush(true).await?;
        if report.gone.contains(&invite.mailbox_id) {
            // The invitation's mailbox is gone: the link was used (or withdrawn).
            blocking(|| {
                self.profile
                    .cancel_group_join(&reply.id.0, &invite.mailbox_id)
            })?;
            let _ = self.delete_spent().await;
            return Err(Error::InviteUsed(invite.name.clone()));
        }
        Ok(JoinRequest {
            group,
            inviter: invite.name.clone(),
            sent: report.waiting == 0,
        })
    }

    /// Encrypts and queues `text` for a group, then tries to send everything queued.
    ///
    /// # Errors
    /// For an unknown group or bad text.
    pub async fn send_group(
        &mut self,
        group: &str,
        text: &str,
    ) -> Result<(GroupMessage, FlushReport), Error> {
        let info = self.profile.find_group(group)?;
        let message = blocking(|| self.profile.compose_group(info.id, text))?;
        let report = self.flush(true).await?;
        Ok((message, report))
    }

    /// Adds an existing contact to a group: a one-time group invitation travels to the
    /// contact inside your 1:1 conversation, and the contact's device asks to join with it.
    ///
    /// # Errors
    /// For an unknown group or contact, a member who is not an admin, or a relay failure.
    pub async fn group_add_contact(&mut self, group: &str, contact: &str) -> Result<(), Error> {
        let contact = self.profile.find_contact(contact)?;
        let link = self.group_invite(group).await?;
        blocking(|| self.profile.compose_group_invite(contact.id, &link))?;
        self.flush(true).await?;
        Ok(())
    }

    /// Queues a change to a group (remove, promote, rename, refresh) and sends it.
    ///
    /// # Errors
    /// When the rules refuse the change.
    pub async fn group_change(
        &mut self,
        group: &str,
        change: GroupChange<'_>,
    ) -> Result<FlushReport, Error> {
        let info = self.profile.find_group(group)?;
        blocking(|| self.profile.group_change(info.id, change))?;
        self.flush(true).await
    }

    /// Asks to leave a group.
    ///
    /// # Errors
    /// For the group's last admin, or an unknown group.
    pub async fn leave_group(&mut self, group: &str) -> Result<FlushReport, Error> {
        let info = self.profile.find_group(group)?;
        blocking(|| self.profile.leave_group(info.id))?;
        self.flush(true).await
    }

    /// Posts queued items, oldest first; per destination, stops at the first failure so the
    /// order holds. With `force`, ignores the backoff (a person asked to send now).
    ///
    /// # Errors
    /// Only on profile failures.
    pub async fn flush(&mut self, force: bool) -> Result<FlushReport, Error> {
        let mut report = FlushReport::default();
        let now = now_ms();
        let mut blocked: BTreeSet<(String, [u8; 32])> = BTreeSet::new();
        for item in self.profile.outbox()? {
            // Posts carried for others keep their own order and never hold up this device's.
            let dest = if item.carried {
                (format!("carried {}", item.relay), item.mailbox)
            } else {
                (item.relay.clone(), item.mailbox)
            };
            if blocked.contains(&dest) || (!force && item.next_attempt_at_ms > now) {
                blocked.insert(dest);
                report.waiting += usize::from(!item.carried);
                continue;
            }
            if item.carried
                && parse_stored_relay(&item.relay)
                    .map(|l| !self.sessions.contains_key(l.relay_key()))
                    .unwrap_or(true)
            {
                // Carried only over a session that is open (it is whenever this device reads
                // the home relay): never a reason to wait for a relay that may be blocked.
                blocked.insert(dest);
                continue;
            }
            let detour = blocking(|| self.profile.via_mirror(&item))?;
            let unopened = parse_stored_relay(&item.relay)
                .map(|l| !self.sessions.contains_key(l.relay_key()))
                .unwrap_or(false);
            let mut posted = if detour.is_some() && unopened {
                // A log's home relay that does not answer soon is not waited for: its mirror
                // takes the post.
                tokio::time::timeout(MIRROR_PATIENCE, self.post(&item))
                    .await
                    .unwrap_or_else(|_| {
                        Err(Error::Relay {
                            whose: "the group's relay".to_owned(),
                            source: ClientError::Lost(format!(
                                "no answer within {MIRROR_PATIENCE:?}"
                            )),
                        })
                    })
            } else {
                self.post(&item).await
            };
            if let Err(Error::Relay { source, .. }) = &posted
                && !matches!(source, ClientError::Refused { .. })
                && let Some(detour) = detour
            {
                // The log's home relay cannot be reached: the post goes to its mirror, whose
                // keeper carries it home (the log's one order stays the home relay's).
                if self.post(&detour).await.is_ok() {
                    posted = Ok(());
                }
            }
            match posted {
                Ok(()) => {
                    blocking(|| self.profile.sent(item.id))?;
                    report.sent += 1;
                    report.stored.push((item.mailbox, item.payload.len()));
                }
                Err(_) if item.carried => {
                    // Carried for someone else: it waits for the home relay quietly (another
                    // keeper of the log may carry it first).
                    let delay = backoff_ms(item.attempts);
                    blocking(|| self.profile.failed(item.id, delay))?;
                    blocked.insert(dest);
                }
                Err(e) => {
                    if let Error::Relay {
                        source:
                            ClientError::Refused {
                                code: ErrorCode::NoSuchMailbox,
                                ..
                            },
                        ..
                    } = &e
                    {
                        report.gone.push(item.mailbox);
                    }
                    let delay = backoff_ms(item.attempts);
                    blocking(|| self.profile.failed(item.id, delay))?;
                    report.errors.push(e.to_string());
                    blocked.insert(dest);
                    report.waiting += 1;
                }
            }
        }
        self.rotate_logs(&mut report).await?;
        self.delete_spent().await?;
        Ok(report)
    }

    /// Deletes the relay mailboxes of used group invitations and answered join requests, so
    /// a link that was used opens nothing on the relay any more (nobody can fill it).
    async fn delete_spent(&mut self) -> Result<(), Error> {
        for inbox in blocking(|| self.profile.spent_mailboxes())? {
            let link = parse_stored_relay(&inbox.relay)?;
            // Only over a session that is open: this is housekeeping, never a reason to wait
            // for a relay that cannot be reached.
            if !self.sessions.contains_key(link.relay_key()) {
                continue;
            }
            let Ok(session) = self.session(&link, "your relay").await else {
                continue;
            };
            match session
                .conn
                .delete_mailbox(&inbox.key, &MailboxId(inbox.mailbox))
                .await
            {
                Ok(())
                | Err(ClientError::Refused {
                    code: ErrorCode::NoSuchMailbox,
                    ..
                }) => blocking(|| self.profile.forget_spent(&inbox.mailbox))?,
                Err(e) => self.relay_failed(&link, &e),
            }
        }
        Ok(())
    }

    /// Sets the new keys of logs whose removal announcement is on the relay.
    async fn rotate_logs(&mut self, report: &mut FlushReport) -> Result<(), Error> {
        for r in self.profile.pending_rotations()? {
            let link = parse_stored_relay(&r.relay)?;
            let session = match self.session(&link, "the group's relay").await {
                Ok(s) => s,
                Err(e) => {
                    report.errors.push(e.to_string());
                    continue;
                }
            };
            match session
                .conn
                .update_log(
                    &r.owner,
                    &MailboxId(r.log_id),
                    Some(&r.next_owner),
                    pigeon_proto::auth::cap_hash(&r.next_cap),
                )
                .await
            {
                Ok(()) if r.mirror => blocking(|| self.profile.mirror_rotated(r.group))?,
                Ok(()) => blocking(|| self.profile.rotated(r.group))?,
                Err(source) => {
                    self.relay_failed(&link, &source);
                    report.errors.push(
                        Error::Relay {
                            whose: "the group's relay".to_owned(),
                            source,
                        }
                        .to_string(),
                    );
                }
            }
        }
        Ok(())
    }

    async fn post(&mut self, item: &OutboxItem) -> Result<(), Error> {
        let link = parse_stored_relay(&item.relay)?;
        let whose = self.whose(&item.mailbox);
        let mut fresh = false;
        let mut first_attempt = self.profile.take_first_attempt(&item.message_id);
        loop {
            // A session kept open from earlier may have been closed by the relay meanwhile
            // (it closes connections that subscribe to nothing once they idle): then one new
            // one is tried at once. Posting again is safe, as the relay de-duplicates by the
            // message id.
            fresh |= !self.sessions.contains_key(link.relay_key());
            let session = self.session(&link, &whose).await?;
            let conn = &session.conn;
            let (mailbox, payload) = (MailboxId(item.mailbox), item.payload.clone());
            // Only the first try of a post this process queued is a first attempt; a second
            // try, after a lost connection, may find the first one stored.
            let sent = if std::mem::take(&mut first_attempt) {
                conn.send_first_attempt(&mailbox, &item.sender_cap, item.message_id, payload)
                    .await
            } else {
                conn.send(&mailbox, &item.sender_cap, item.message_id, payload)
                    .await
            };
            match sent {
                Ok(_) => return Ok(()),
                Err(source) => {
                    self.relay_failed(&link, &source);
                    if !fresh && matches!(source, ClientError::Lost(_)) {
                        fresh = true;
                        continue;
                    }
                    return Err(Error::Relay { whose, source });
                }
            }
        }
    }

    fn whose(&self, peer_mailbox: &[u8; 32]) -> String {
        self.profile
            .contact_by_peer_mailbox(peer_mailbox)
            .ok()
            .flatten()
            .map_or_else(
                || "the contact's relay".to_owned(),
                |n| format!("{n}'s relay"),
            )
    }

    /// Connects to every relay this profile receives on and subscribes to every mailbox not
    /// yet subscribed. Returns how many messages were waiting.
    ///
    /// # Errors
    /// When a relay cannot be reached (mailboxes on other relays stay subscribed).
    pub async fn subscribe_all(&mut self) -> Result<u64, Error> {
        self.save_learned();
        let mut pending = 0;
        let mut first_error = None;
        let wanted: Vec<(String, [u8; 32], Wanted)> = self
            .profile
            .inboxes()?
            .into_iter()
            .map(|i| (i.relay, i.mailbox, Wanted::Inbox(i.key)))
            .chain(self.profile.logs()?.into_iter().map(|l| {
                (
                    l.relay,
                    l.log_id,
                    Wanted::Log {
                        cap: l.cap,
                        cursor: l.cursor,
                    },
                )
            }))
            .collect();
        let given_up = self.open_for_reading(&wanted).await?;
        for (relay, mailbox, how) in wanted {
            let link = parse_stored_relay(&relay)?;
            if given_up.contains(link.relay_key()) {
                // Its logs are read through their other copy this time.
                continue;
            }
            let whose = match how {
                Wanted::Inbox(_) => "your relay",
                Wanted::Log { .. } => "the group's relay",
            };
            let result = async {
                let session = self.session(&link, whose).await?;
                let id = MailboxId(mailbox);
                let subscribed = match &how {
                    Wanted::Inbox(_) => session.subscribed.contains(&mailbox),
                    Wanted::Log { cap, .. } => session.logs.get(&mailbox) == Some(cap),
                };
                if subscribed {
                    return Ok(None);
                }
                match &how {
                    Wanted::Inbox(key) => session.conn.subscribe(key, &id).await,
                    Wanted::Log { cap, cursor } => {
                        session.conn.subscribe_log(&id, cap, *cursor).await
                    }
                }
                .map(Some)
                .map_err(|source| Error::Relay {
                    whose: whose.to_owned(),
                    source,
                })
            }
            .await;
            match result {
                Ok(Some(n)) => {
                    pending += n;
                    let relay_key = *link.relay_key();
                    let session = self.sessions.get_mut(&relay_key);
                    match how {
                        Wanted::Inbox(_) => {
                            *self.waiting.entry((relay_key, mailbox)).or_default() += n;
                            if let Some(s) = session {
                                s.subscribed.insert(mailbox);
                            }
                        }
                        Wanted::Log { cap, .. } => {
                            // A log is read from the cursor: what waits is exactly this.
                            self.waiting.insert((relay_key, mailbox), n);
                            if let Some(s) = session {
                                s.logs.insert(mailbox, cap);
                            }
                        }
                    }
                }
                Ok(None) => {}
                Err(Error::Relay {
                    source: ClientError::Refused { code, .. },
                    ..
                }) => {
                    // The relay lost or expired this mailbox or log (or never had it): the
                    // others are still worth reading.
                    tracing::warn!(code = code.as_u32(), "a mailbox could not be subscribed");
                }
                Err(e) => {
                    if let Error::Relay { source, .. } = &e {
                        self.relay_failed(&link, source);
                    }
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(pending),
        }
    }

    /// Opens every relay `wanted` lives on at once (a failure shows when subscribing). A
    /// relay that holds nothing but copies of logs whose other copy is open by then gets
    /// [`MIRROR_PATIENCE`]; it is given up for this round (returned) if it has not answered.
    async fn open_for_reading(
        &mut self,
        wanted: &[(String, [u8; 32], Wanted)],
    ) -> Result<BTreeSet<[u8; 32]>, Error> {
        use futures_util::StreamExt as _;
        let mut links: Vec<RelayLink> = Vec::new();
        for (relay, _, _) in wanted {
            let link = parse_stored_relay(relay)?;
            if !self.sessions.contains_key(link.relay_key())
                && !links.iter().any(|l| l.relay_key() == link.relay_key())
            {
                links.push(link);
            }
        }
        if links.is_empty() {
            return Ok(BTreeSet::new());
        }
        // Which relays hold each log (a log with a mirror is wanted on two).
        let mut copies: BTreeMap<[u8; 32], Vec<[u8; 32]>> = BTreeMap::new();
        let mut only_copies: BTreeMap<[u8; 32], bool> = BTreeMap::new();
        for (relay, mailbox, how) in wanted {
            let key = *parse_stored_relay(relay)?.relay_key();
            let is_log = matches!(how, Wanted::Log { .. });
            if is_log {
                copies.entry(*mailbox).or_default().push(key);
            }
            let entry = only_copies.entry(key).or_insert(true);
            *entry &= is_log;
        }
        let network = NetworkId::current();
        let mut opened = Vec::new();
        let mut open: BTreeSet<[u8; 32]> = self.sessions.keys().copied().collect();
        let mut waiting: BTreeSet<[u8; 32]> = links.iter().map(|l| *l.relay_key()).collect();
        {
            let this = &*self;
            let mut pending: futures_util::stream::FuturesUnordered<_> = links
                .iter()
                .map(|link| async move { (link, this.open(link, network).await) })
                .collect();
            let deadline = tokio::time::Instant::now() + MIRROR_PATIENCE;
            let mut patient = true;
            while !waiting.is_empty() {
                let next = if patient {
                    match tokio::time::timeout_at(deadline, pending.next()).await {
                        Ok(next) => next,
                        Err(_) => {
                            patient = false;
                            None
                        }
                    }
                } else {
                    pending.next().await
                };
                if let Some((link, result)) = next {
                    waiting.remove(link.relay_key());
                    if result.is_ok() {
                        open.insert(*link.relay_key());
                    }
                    opened.push((link.clone(), result));
                }
                // Past the patience, stop waiting once every relay still silent holds only log
                // copies that are readable elsewhere.
                let redundant = |relay: &[u8; 32]| {
                    only_copies.get(relay).copied().unwrap_or(false)
                        && copies.values().all(|holders| {
                            !holders.contains(relay)
                                || holders.iter().any(|h| h != relay && open.contains(h))
                        })
                };
                if !patient && waiting.iter().all(redundant) {
                    break;
                }
            }
        }
        let redundant = |relay: &[u8; 32]| {
            only_copies.get(relay).copied().unwrap_or(false)
                && copies.values().all(|holders| {
                    !holders.contains(relay)
                        || holders.iter().any(|h| h != relay && open.contains(h))
                })
        };
        let mut skip = waiting;
        for (link, result) in opened {
            match result {
                Ok((conn, won, best)) => self.adopt(&link, network, best, conn, won),
                // A relay that failed and holds only copies readable elsewhere is not tried
                // again now (nor reported: its logs are read); any other failure is left for
                // the subscription to report (it tries the relay again).
                Err(_) if redundant(link.relay_key()) => {
                    skip.insert(*link.relay_key());
                }
                Err(_) => {}
            }
        }
        Ok(skip)
    }

    /// Deliveries announced at subscription and not yet received.
    pub fn backlog(&self) -> u64 {
        self.waiting.values().sum()
    }

    /// Waits for the next thing from any relay and handles it. Returns `None` when no session
    /// is open.
    ///
    /// # Errors
    /// On profile failures (nothing unrecorded was acknowledged).
    pub async fn next_events(&mut self) -> Result<Option<Vec<ClientEvent>>, Error> {
        if self.sessions.is_empty() {
            return Ok(None);
        }
        let Some((key, generation, event)) = self.events_rx.recv().await else {
            return Ok(None);
        };
        if self.sessions.get(&key).map(|s| s.generation) != Some(generation) {
            // From a session already dropped: what it pushed and was not acknowledged comes
            // again on the current one.
            return Ok(Some(Vec::new()));
        }
        match event {
            Event::Push(push) => self.handle_push(key, push).await.map(Some),
            Event::Closed(reason) => {
                self.drop_session(key);
                let reason = match reason {
                    CloseReason::Relay(e) => format!("the relay closed the session: {}", e.message),
                    CloseReason::Eof => "the connection ended".to_owned(),
                    CloseReason::Io(e) => format!("the connection failed: {e}"),
                    CloseReason::Protocol(e) => format!("the relay broke the protocol: {e}"),
                };
                Ok(Some(vec![ClientEvent::Disconnected { reason }]))
            }
        }
    }

    async fn handle_push(
        &mut self,
        key: [u8; 32],
        push: msg::Push,
    ) -> Result<Vec<ClientEvent>, Error> {
        let mut events = Vec::new();
        let Ok(mailbox) = <[u8; 32]>::try_from(push.mailbox_id.as_slice()) else {
            return Ok(vec![ClientEvent::Dropped(
                "the relay pushed for a malformed mailbox id".to_owned(),
            )]);
        };
        if self.profile.is_log(&mailbox)? {
            return self.handle_log_push(key, mailbox, push).await;
        }
        let batch: Vec<(&[u8], &[u8])> = push
            .deliveries
            .iter()
            .map(|d| (d.message_id.as_slice(), d.ciphertext.as_slice()))
            .collect();
        let handled = blocking(|| self.profile.handle_deliveries(&mailbox, &batch))?;
        if let Some(w) = self.waiting.get_mut(&(key, mailbox)) {
            *w = w.saturating_sub(push.deliveries.len() as u64);
        }
        let mut after = AfterHandling::default();
        for h in handled {
            self.event_of(h, &mut events, &mut after)?;
        }
        if let Some(session) = self.sessions.get(&key) {
            // A failed ack only means a redelivery, which the profile recognises.
            let seqs = push.deliveries.iter().map(|d| d.seq).collect();
            let _ = session.conn.ack(&MailboxId(mailbox), seqs).await;
        }
        self.after_handling(after, &mut events).await?;
        Ok(events)
    }

    /// What a handled delivery means for a user interface; receipts and group invitations to
    /// act on are collected in `after`.
    fn event_of(
        &self,
        handled: Handled,
        events: &mut Vec<ClientEvent>,
        after: &mut AfterHandling,
    ) -> Result<(), Error> {
        match handled {
            Handled::Message {
                message,
                content_id,
            } => {
                after
                    .receipts
                    .entry(message.contact_id)
                    .or_default()
                    .push(content_id);
                events.push(ClientEvent::Message(message));
            }
            Handled::NewContact(c) => {
                after.new_logs = true;
                events.push(ClientEvent::NewContact(c));
            }
            Handled::Intro { contact_id } => {
                events.push(ClientEvent::Introduced(self.profile.contact(contact_id)?));
            }
            Handled::Receipt {
                contact_id,
                delivered,
            } => events.push(ClientEvent::Delivered {
                contact_id,
                count: delivered,
            }),
            Handled::Rekeyed { contact_id, epoch } => {
                events.push(ClientEvent::Rekeyed { contact_id, epoch });
            }
            Handled::Group(m) => events.push(ClientEvent::Group(m)),
            Handled::JoinedGroup(g) => {
                after.new_logs = true;
                events.push(ClientEvent::JoinedGroup(g));
            }
            Handled::GroupInvite { contact_id, link } => after.invites.push((contact_id, link)),
            Handled::LogKeysChanged => after.keys_changed = true,
            Handled::Duplicate | Handled::GroupEpoch { .. } => {}
            Handled::Dropped(reason) => events.push(ClientEvent::Dropped(reason)),
            Handled::Notice(text) => events.push(ClientEvent::Notice(text)),
            Handled::Linked(text) => {
                after.new_logs = true;
                events.push(ClientEvent::Notice(text));
            }
        }
        Ok(())
    }

    /// Sends receipts for what arrived and asks to join the groups contacts added this
    /// profile to (after the deliveries were acknowledged).
    async fn after_handling(
        &mut self,
        after: AfterHandling,
        events: &mut Vec<ClientEvent>,
    ) -> Result<(), Error> {
        if after.new_logs {
            // A conversation or group just joined: read its log from now on. A relay that
            // cannot be reached now is tried again at the next subscription.
            let _ = self.subscribe_all().await;
        }
        for (contact, ids) in after.receipts {
            blocking(|| self.profile.compose_receipt(contact, ids))?;
        }
        for (contact_id, link) in after.invites {
            // A contact added this profile to a group: ask to join with the invitation it
            // sent inside the conversation.
            let from = self.profile.contact(contact_id)?.name;
            match Invite::parse(&link) {
                Ok(invite) if invite.group.is_some() => match self.join_invite(&invite).await {
                    Ok(request) => events.push(ClientEvent::Notice(format!(
                        "{from} added you to {}; asked to join",
                        request.group
                    ))),
                    Err(e) => events.push(ClientEvent::Notice(format!(
                        "{from} added you to a group, but joining failed: {e}"
                    ))),
                },
                _ => events.push(ClientEvent::Dropped(format!(
                    "{from} sent a group invitation that is not valid"
                ))),
            }
        }
        Ok(())
    }

    async fn handle_log_push(
        &mut self,
        key: [u8; 32],
        log: [u8; 32],
        push: msg::Push,
    ) -> Result<Vec<ClientEvent>, Error> {
        let batch: Vec<(u64, &[u8], &[u8])> = push
            .deliveries
            .iter()
            .map(|d| (d.seq, d.message_id.as_slice(), d.ciphertext.as_slice()))
            .collect();
        let handled = blocking(|| self.profile.handle_log_deliveries_on(&key, &log, &batch))?;
        if let Some(w) = self.waiting.get_mut(&(key, log)) {
            *w = w.saturating_sub(push.deliveries.len() as u64);
        }
        let mut events = Vec::new();
        let mut after = AfterHandling::default();
        for h in handled {
            self.event_of(h, &mut events, &mut after)?;
        }
        if let Some(session) = self.sessions.get(&key) {
            // A log keeps its messages; the ack only frees the push window.
            let seqs = push.deliveries.iter().map(|d| d.seq).collect();
            let _ = session.conn.ack(&MailboxId(log), seqs).await;
        }
        let keys_changed = after.keys_changed;
        self.after_handling(after, &mut events).await?;
        if keys_changed {
            // Read on with the new capability from where this device is.
            if let Some(s) = self.sessions.get_mut(&key) {
                s.logs.remove(&log);
            }
            let _ = self.subscribe_all().await;
        }
        Ok(events)
    }

    /// The contents of a backup (for [`crate::backup::seal`]) and what is in it. First a key
    /// refresh in every active conversation puts a fresh restore secret's commitment into this
    /// device's leaf; the secrets go into the backup for the conversations whose log took the
    /// refresh within `wait` (the others are in it as history only). Call
    /// [`Profile::backup_written`] once the file is safely written.
    ///
    /// # Errors
    /// Local failures; a relay that cannot be reached is tried again until `wait` ends.
    pub async fn backup(
        &mut self,
        wait: Duration,
    ) -> Result<(Vec<u8>, crate::profile::BackupSummary), Error> {
        self.backup_with_progress(wait, |_, _| {}).await
    }

    /// [`Client::backup`], telling `progress(done, total)` how many conversations took the
    /// key refresh so far.
    ///
    /// # Errors
    /// As [`Client::backup`].
    pub async fn backup_with_progress(
        &mut self,
        wait: Duration,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<(Vec<u8>, crate::profile::BackupSummary), Error> {
        let total = blocking(|| self.profile.prepare_backup())?;
        progress(0, total);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match self
                .sync(Duration::from_millis(200), Duration::from_secs(30))
                .await
            {
                Ok(_) => {}
                Err(Error::Relay { .. }) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(Error::Relay { .. }) => break,
                Err(e) => return Err(e),
            }
            let waiting = blocking(|| self.profile.backup_waiting())?.len();
            progress(total.saturating_sub(waiting), total);
            if waiting == 0 || tokio::time::Instant::now() >= deadline {
                break;
            }
        }
        Ok(blocking(|| self.profile.export_backup())?)
    }

    /// Posts what is queued (now, whatever the backoff: someone asked), subscribes, takes
    /// everything waiting (until the backlog is drained, nothing arrives for `quiet`, or
    /// `limit` passes), then posts what that queued. Returns what happened.
    ///
    /// # Errors
    /// When your relay cannot be reached, or on profile failures.
    pub async fn sync(
        &mut self,
        quiet: Duration,
        limit: Duration,
    ) -> Result<(Vec<ClientEvent>, FlushReport), Error> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut events = Vec::new();
        blocking(|| self.profile.drive_groups())?;
        let mut report_sent = 0;
        let mut stored = Vec::new();
        // Whether every mailbox is subscribed now: a later reconnection's answer replaces an
        // earlier failure (a session that froze while a subscription was in flight ends it
        // with `Lost`, and the reconnection below subscribes again).
        let mut subscribed = self.subscribe_all().await;
        // A session cut while a subscription was in flight (a freeze the dialer learned from
        // just now, a reset) is made again at once, twice at most: the relay redelivers what
        // was not acknowledged. (A relay that cannot be reached at all is not retried here.)
        for _ in 0..2 {
            let lost = matches!(
                &subscribed,
                Err(Error::Relay {
                    source: ClientError::Lost(_),
                    ..
                })
            );
            if !lost || tokio::time::Instant::now() >= deadline {
                break;
            }
            self.save_learned();
            subscribed = self.subscribe_all().await;
        }
        let first = self.flush(true).await?;
        let mut reconnected = false;
        loop {
            let wait = if self.backlog() > 0 {
                deadline.saturating_duration_since(tokio::time::Instant::now())
            } else {
                quiet.min(deadline.saturating_duration_since(tokio::time::Instant::now()))
            };
            tracing::debug!(backlog = self.backlog(), ?wait, "sync waits for deliveries");
            match tokio::time::timeout(wait, self.next_events()).await {
                Ok(Ok(Some(mut batch))) => {
                    let lost = batch
                        .iter()
                        .any(|e| matches!(e, ClientEvent::Disconnected { .. }));
                    events.append(&mut batch);
                    // What handling queued (a commit, a Welcome, a receipt) goes out now, so
                    // a group change makes its round trip through the log within this sync.
                    if !lost {
                        let more = self.flush(false).await?;
                        report_sent += more.sent;
                        stored.extend(more.stored);
                    }
                    if lost && tokio::time::Instant::now() < deadline {
                        // Reconnect and carry on: the relay redelivers what was not acked.
                        self.save_learned();
                        subscribed = self.subscribe_all().await;
                        reconnected = true;
                    }
                }
                Ok(Ok(None)) | Err(_) => break,
                Ok(Err(e)) => return Err(e),
            }
        }
        self.save_learned();
        // What failed on a connection that was lost meanwhile is tried once more, now.
        let mut report = self.flush(reconnected).await?;
        report.sent += first.sent + report_sent;
        report.stored.extend(first.stored);
        report.stored.extend(stored);
        report.errors.extend(first.errors);
        subscribed?;
        Ok((events, report))
    }

    /// Keeps the download caps the dialer learned in this run in the profile, for the next.
    fn save_learned(&mut self) {
        if let Ok(connector) = &self.connector {
            let learned = connector.transports().learned();
            if learned != self.saved_caps {
                match self.profile.save_route_caps(&learned) {
                    Ok(()) => self.saved_caps = learned,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not keep the learned download caps")
                    }
                }
            }
        }
    }

    /// The link of every relay session open now.
    pub fn connected_relays(&self) -> Vec<RelayLink> {
        self.sessions.values().map(|s| s.link.clone()).collect()
    }

    /// Tells `progress` about every route attempt from now on (which relay, what happened).
    pub fn set_progress(&mut self, progress: ProgressSink) {
        self.progress = progress;
    }

    /// The route the session with `relay` went by (redacted), if one is open.
    pub fn route_to(&self, relay: &RelayLink) -> Option<&str> {
        self.routes.get(relay.relay_key()).map(String::as_str)
    }

    /// Every relay this profile uses: its own, then those of its inboxes and group logs, each
    /// once.
    ///
    /// # Errors
    /// A database failure, or a stored relay link that no longer parses.
    pub fn relays(&self) -> Result<Vec<RelayLink>, Error> {
        let mut out = self.profile.relays()?;
        let stored = self
            .profile
            .inboxes()?
            .into_iter()
            .map(|i| i.relay)
            .chain(self.profile.logs()?.into_iter().map(|l| l.relay));
        for text in stored {
            let link = parse_stored_relay(&text)?;
            if !out.iter().any(|l| l.relay_key() == link.relay_key()) {
                out.push(link);
            }
        }
        Ok(out)
    }

    /// Connects to every relay in `relays` at once (each searching its routes as every command
    /// does, all reported to [`Client::set_progress`]'s sink as they go),
    /// so a blocked relay does not hold up the others; returns each one's route, in order.
    pub async fn connect_all(&mut self, relays: &[RelayLink]) -> Vec<Result<String, Error>> {
        let network = NetworkId::current();
        let opened = {
            let this = &*self;
            futures_util::future::join_all(relays.iter().map(|link| async move {
                if this.sessions.contains_key(link.relay_key()) {
                    None
                } else {
                    Some(this.open(link, network).await)
                }
            }))
            .await
        };
        let mut out = Vec::with_capacity(relays.len());
        for (link, opened) in relays.iter().zip(opened) {
            match opened {
                Some(Ok((conn, won, best))) => self.adopt(link, network, best, conn, won),
                Some(Err(source)) => {
                    out.push(Err(Error::Relay {
                        whose: "the relay".to_owned(),
                        source,
                    }));
                    continue;
                }
                None => {}
            }
            out.push(Ok(self.route_to(link).unwrap_or_default().to_owned()));
        }
        out
    }
}

/// What handling a push leaves to do once it is acknowledged.
#[derive(Default)]
struct AfterHandling {
    /// Receipts to send, per contact.
    receipts: BTreeMap<crate::ContactId, Vec<Vec<u8>>>,
    /// Group invitations contacts sent.
    invites: Vec<(crate::ContactId, String)>,
    /// A log moved to new keys.
    keys_changed: bool,
    /// A conversation or group was joined: its log is new.
    new_logs: bool,
}

/// What [`Client::subscribe_all`] subscribes to.
enum Wanted {
    /// A one-way mailbox, proven with its key.
    Inbox(pigeon_proto::auth::SigningKey),
    /// A group log, read with its member capability from the cursor.
    Log { cap: [u8; 32], cursor: u64 },
}

/// Runs profile work (SQLite with fsync, MLS) without stalling the async runtime: on a
/// multi-threaded runtime the worker hands its other tasks to the rest of the pool while this
/// blocks (a current-thread runtime, as in some tests, just runs it).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

fn backoff_ms(attempts: i64) -> i64 {
    let base = 1000i64
        .saturating_mul(1 << attempts.clamp(0, 16))
        .min(MAX_BACKOFF_MS);
    // ±20% jitter so many clients retrying at once spread out.
    let jitter = pigeon_proto::auth::random_bytes::<1>().map_or(128, |b| i64::from(b[0]));
    base * (80 + jitter * 40 / 255) / 100
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_a_ceiling_with_jitter() {
        for (attempts, low, high) in [(0, 800, 1200), (3, 6400, 9600), (40, 240_000, 360_000)] {
            let b = backoff_ms(attempts);
            assert!((low..=high).contains(&b), "{attempts}: {b}");
        }
    }
}
