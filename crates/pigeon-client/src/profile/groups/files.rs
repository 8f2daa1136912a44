//! Photos, voice notes and files in conversations (issue #17): what the profile keeps of each
//! one and the steps of its life. The sealing is [`crate::attachment`]; the transfers are
//! the client's (`Client::transfer_files`).
//!
//! An outgoing file is sealed in chunks into `files/` beside the database as soon as it is
//! chosen, with everything it needs derived from one seed kept in its row; its line is in
//! the transcript at once. The upload posts the chunks to a log of the file's own on the
//! profile's relay, recording how many the relay holds, and retires the capability it posted
//! with; only then does the message describing it (key, hash, where) go to the conversation,
//! as a draft like any text. A received description is kept, and the download fetches,
//! opens and writes each chunk at its place in `files/`, recording which it has, until all
//! are there and the whole matches the sender's SHA-256. Both survive a lost connection and
//! `kill -9`: what was recorded is where they go on from.

use super::{GroupRow, STATE_ACTIVE};
use crate::attachment::{FileError, FileHash, FileSecrets, Layout, Received, safe_file_name};
use crate::ids::GroupId;
use crate::profile::{Profile, ProfileError, db, new_content, now_ms, random, to_i64};
use pigeon_e2ee::content::{Attachment, AttachmentKind, MAX_ATTACHMENT, MAX_THUMBNAIL, body::Body};
use pigeon_transport::RelayLink;
use prost::Message as _;
use rusqlite::params;
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// The directory beside the database that holds sealed files.
pub const FILES_DIR: &str = "files";

/// Where a file is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileState {
    /// Outgoing: its chunks are going to the relay.
    Uploading,
    /// Outgoing: on the relay, and its message went to the conversation.
    Sent,
    /// Incoming: its chunks are being fetched.
    Downloading,
    /// Incoming: here whole, and it matches what the sender sent.
    Received,
    /// It cannot be had (see the error).
    Failed,
}

impl FileState {
    fn from_i64(n: i64) -> Self {
        match n {
            UPLOADING => Self::Uploading,
            SENT => Self::Sent,
            DOWNLOADING => Self::Downloading,
            RECEIVED => Self::Received,
            _ => Self::Failed,
        }
    }

    /// A word for people and front ends.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Uploading => "uploading",
            Self::Sent => "sent",
            Self::Downloading => "downloading",
            Self::Received => "received",
            Self::Failed => "failed",
        }
    }
}

const UPLOADING: i64 = 0;
const SENT: i64 = 1;
const DOWNLOADING: i64 = 2;
const RECEIVED: i64 = 3;
const FAILED: i64 = 4;

/// A file in a conversation, as front ends show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileInfo {
    /// Its number in this profile (`pigeon files`).
    pub id: i64,
    /// The transcript line it belongs to.
    pub message: i64,
    /// The conversation it is in.
    pub group: GroupId,
    /// Sent by this profile.
    pub outgoing: bool,
    /// Its name, made safe to save under and show.
    pub name: String,
    /// Its media type as judged from its first bytes (a receiver's own judgement, not the
    /// sender's word).
    pub mime: String,
    /// File, picture or voice note.
    pub kind: AttachmentKind,
    /// Its length.
    pub size: u64,
    /// Where it is in its life.
    pub state: FileState,
    /// Bytes uploaded or downloaded so far.
    pub done: u64,
    /// Why it failed.
    pub error: Option<String>,
    /// A picture's thumbnail is here.
    pub has_thumbnail: bool,
    /// Where it was last saved to.
    pub saved_to: Option<PathBuf>,
}

/// An upload to carry on with.
#[derive(Debug)]
pub struct PendingUpload {
    /// The file's number.
    pub id: i64,
    /// Its name (safe).
    pub name: String,
    /// Its secrets.
    pub secrets: FileSecrets,
    /// Its chunks.
    pub layout: Layout,
    /// The relay its chunks go to.
    pub relay: RelayLink,
    /// Chunks 0..done are on the relay.
    pub done: u64,
    /// The sealed chunks on this device.
    pub path: PathBuf,
}

/// A download to carry on with.
#[derive(Clone)]
pub struct PendingDownload {
    /// The file's number.
    pub id: i64,
    /// Its name (safe).
    pub name: String,
    /// The key its chunks open with.
    pub key: [u8; 32],
    /// The log holding its chunks.
    pub blob_id: [u8; 32],
    /// The capability that reads that log.
    pub read_cap: [u8; 32],
    /// Its chunks.
    pub layout: Layout,
    /// The relay holding them.
    pub relay: RelayLink,
    /// The log position read up to.
    pub cursor: u64,
    /// The chunks on this device.
    pub received: Received,
    /// Where they are written.
    pub path: PathBuf,
}

impl std::fmt::Debug for PendingDownload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingDownload")
            .field("id", &self.id)
            .field("cursor", &self.cursor)
            .finish_non_exhaustive()
    }
}

/// A file that a failed step left half made: deleted when dropped, unless kept.
struct Unkept(Option<PathBuf>);

impl Unkept {
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Unkept {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A file's record as read: what front ends see, the description, and the transfer's state.
struct FileRow {
    info: FileInfo,
    description: Attachment,
    /// An upload's chunks on the relay, or a download's log position.
    done: u64,
    /// A download's bitmap of chunks here.
    received: Option<Vec<u8>>,
    /// An upload's seed, until it is sent.
    seed: Option<Zeroizing<Vec<u8>>>,
}

fn file_err(doing: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ProfileError {
    let path = path.to_owned();
    move |source| ProfileError::File {
        doing,
        path,
        source,
    }
}

fn bad_row(reason: impl Into<String>) -> ProfileError {
    ProfileError::Db {
        doing: "reading a file's record",
        reason: reason.into(),
    }
}

/// The media type of a file from its first bytes (`application/octet-stream` when unknown).
pub fn sniff_mime(head: &[u8]) -> String {
    infer::get(head).map_or_else(
        || "application/octet-stream".to_owned(),
        |t| t.mime_type().to_owned(),
    )
}

/// Pictures a thumbnail is made of and that front ends may show inline. (Not SVG: it can
/// carry script.)
pub fn is_picture(mime: &str) -> bool {
    matches!(
        mime,
        "image/jpeg" | "image/png" | "image/gif" | "image/webp"
    )
}

/// A small JPEG of a picture (at most 320 pixels a side and [`MAX_THUMBNAIL`] bytes), or
/// `None` when the bytes are not a picture this build decodes or it would not fit.
pub fn make_thumbnail(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .ok()?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(16_384);
    limits.max_image_height = Some(16_384);
    limits.max_alloc = Some(512 << 20);
    reader.limits(limits);
    let picture = reader.decode().ok()?;
    for (side, quality) in [(320, 70), (240, 60), (160, 50)] {
        let small = picture.thumbnail(side, side).into_rgb8();
        let mut out = Vec::new();
        let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality);
        if small.write_with_encoder(encoder).is_ok() && out.len() <= MAX_THUMBNAIL {
            return Some(out);
        }
    }
    None
}

/// Whether `bytes` look like a JPEG (what a thumbnail must be to be kept).
fn is_jpeg(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xff, 0xd8, 0xff])
}

impl Profile {
    /// The directory of sealed files.
    pub fn files_dir(&self) -> PathBuf {
        self.dir().join(FILES_DIR)
    }

    fn sealed_path(&self, blob_id: &[u8]) -> PathBuf {
        self.files_dir().join(hex::encode(blob_id))
    }

    /// Chooses `source` to send in the conversation `id`, with `caption`: seals it into the
    /// profile (so it can be sent even if `source` changes or goes) and puts its line in the
    /// transcript. Its chunks go to the relay of the conversation's log, which every member
    /// reaches already. The upload is `Client::transfer_files`.
    ///
    /// `kind` says what it is when the caller knows (a voice note it recorded); otherwise it
    /// is a picture or a file by its first bytes.
    ///
    /// # Errors
    /// [`ProfileError::Invalid`] for an empty file, one over 100 MiB or a caption too long;
    /// [`ProfileError::File`] when it cannot be read; [`ProfileError::NotNow`] when this
    /// device is no longer in the conversation.
    pub fn prepare_file(
        &self,
        id: GroupId,
        source: &Path,
        caption: &str,
        kind: Option<AttachmentKind>,
    ) -> Result<(super::GroupMessage, FileInfo), ProfileError> {
        let name = source
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.prepare_file_named(id, source, &name, caption, kind)
    }

    /// [`Self::prepare_file`] under a given name (an upload from a page, kept in a temporary
    /// file), made safe first.
    ///
    /// # Errors
    /// As [`Self::prepare_file`].
    pub fn prepare_file_named(
        &self,
        id: GroupId,
        source: &Path,
        name: &str,
        caption: &str,
        kind: Option<AttachmentKind>,
    ) -> Result<(super::GroupMessage, FileInfo), ProfileError> {
        let name = safe_file_name(name);
        if caption.len() > 4096 {
            return Err(ProfileError::Invalid(
                "a file's caption may be at most 4096 bytes".to_owned(),
            ));
        }
        let row = self.group_row(id)?;
        if row.state != STATE_ACTIVE {
            return Err(ProfileError::NotNow(format!(
                "this device is no longer in {}",
                row.name
            )));
        }
        let relay = crate::profile::parse_stored_relay(&row.log_relay)?;
        let mut file = std::fs::File::open(source).map_err(file_err("opening", source))?;
        let size = file
            .metadata()
            .map_err(file_err("reading the size of", source))?
            .len();
        if size == 0 {
            return Err(ProfileError::Invalid(format!(
                "{} is empty",
                source.display()
            )));
        }
        if size > MAX_ATTACHMENT {
            return Err(ProfileError::Invalid(format!(
                "{} is {:.1} MiB; a file may be at most 100 MiB",
                source.display(),
                size as f64 / f64::from(1 << 20)
            )));
        }
        let seed: [u8; 32] = random()?;
        let secrets = FileSecrets::from_seed(seed);
        let layout = Layout {
            size,
            chunk_size: crate::attachment::CHUNK,
        };
        std::fs::create_dir_all(self.files_dir()).map_err(file_err("making", &self.files_dir()))?;
        let blob_id = secrets.blob_id();
        let sealed_path = self.sealed_path(&blob_id.0);
        let part = sealed_path.with_extension("part");
        // Whatever fails from here on leaves neither half a sealed file nor an orphan one.
        let part_guard = Unkept(Some(part.clone()));
        let sealed_guard = Unkept(Some(sealed_path.clone()));
        let mut out = std::fs::File::create(&part).map_err(file_err("writing", &part))?;
        let key = secrets.key();
        let mut hash = FileHash::default();
        let mut head = Vec::new();
        let mut picture = Vec::new();
        let mut collect = false;
        let mut buf = vec![0; layout.chunk_size as usize];
        for index in 0..layout.chunks() {
            let len = layout.plain_len(index);
            file.read_exact(&mut buf[..len]).map_err(file_err(
                "reading (did it change while being sent?)",
                source,
            ))?;
            let plain = &buf[..len];
            hash.update(plain);
            if index == 0 {
                head = plain[..plain.len().min(8192)].to_vec();
                collect = kind.is_none() && is_picture(&sniff_mime(&head));
            }
            if collect {
                picture.extend_from_slice(plain);
            }
            let sealed = layout
                .seal(&key, index, plain)
                .map_err(|e| ProfileError::Invalid(format!("sealing the file failed: {e}")))?;
            out.write_all(&sealed).map_err(file_err("writing", &part))?;
        }
        if file
            .read(&mut [0u8; 1])
            .map_err(file_err("reading", source))?
            != 0
        {
            return Err(ProfileError::Invalid(format!(
                "{} grew while it was being sent",
                source.display()
            )));
        }
        out.sync_all().map_err(file_err("writing", &part))?;
        drop(out);
        std::fs::rename(&part, &sealed_path).map_err(file_err("keeping", &sealed_path))?;
        let mime = sniff_mime(&head);
        let thumbnail = if picture.is_empty() {
            None
        } else {
            make_thumbnail(&picture)
        };
        let kind = kind.unwrap_or(if is_picture(&mime) {
            AttachmentKind::Image
        } else {
            AttachmentKind::File
        });
        let description = Attachment {
            name,
            mime,
            size,
            key: key.to_vec(),
            sha256: hash.finish().to_vec(),
            blob_id: blob_id.0.to_vec(),
            read_cap: secrets.read_cap().to_vec(),
            relay: relay.to_payload().encode_to_vec(),
            thumbnail: thumbnail.unwrap_or_default(),
            caption: caption.to_owned(),
            chunk_size: layout.chunk_size,
            kind: kind as i32,
        };
        let content = new_content(Body::Attachment(Box::new(description.clone())))?;
        // Checked now, not when it is about to go: a description that cannot be sent.
        content
            .pad()
            .map_err(|e| ProfileError::Invalid(format!("the file's description: {e}")))?;
        let relay_msg_id: [u8; 16] = random()?;
        let sent = self.tx(|| {
            let message = self.insert_own_line(&row, &relay_msg_id, &content, caption)?;
            self.conn
                .execute(
                    "INSERT INTO files (message, group_row, outgoing, description, state, seed,
                       updated_at)
                     VALUES (?1, ?2, 1, ?3, ?4, ?5, ?6)",
                    params![
                        message,
                        id,
                        description.encode_to_vec(),
                        UPLOADING,
                        seed.as_slice(),
                        now_ms()
                    ],
                )
                .map_err(db("saving a file"))?;
            Ok(message)
        });
        let message = sent?;
        part_guard.keep();
        sealed_guard.keep();
        let line = self.group_message(message)?;
        let info = self
            .file_of_message(message)?
            .ok_or_else(|| bad_row("it vanished"))?;
        Ok((line, info))
    }

    fn file_rows(
        &self,
        filter: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<FileRow>, ProfileError> {
        let sql = format!(
            "SELECT f.id, f.message, f.outgoing, f.description, f.state, f.done, f.received,
                    f.error, f.saved_to, f.group_row, f.seed
             FROM files f WHERE {filter} ORDER BY f.id"
        );
        let mut stmt = self.conn.prepare(&sql).map_err(db("reading files"))?;
        let rows = stmt
            .query_map(args, |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, bool>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, Option<Vec<u8>>>(6)?,
                    r.get::<_, Option<String>>(7)?,
                    r.get::<_, Option<String>>(8)?,
                    r.get::<_, GroupId>(9)?,
                    r.get::<_, Option<Vec<u8>>>(10)?.map(Zeroizing::new),
                ))
            })
            .map_err(db("reading files"))?;
        let mut out = Vec::new();
        for row in rows {
            let (
                id,
                message,
                outgoing,
                description,
                state,
                recorded,
                received,
                error,
                saved_to,
                group,
                seed,
            ) = row.map_err(db("reading files"))?;
            let recorded = u64::try_from(recorded).unwrap_or(0);
            let a = Attachment::decode(description.as_slice())
                .map_err(|e| bad_row(format!("its description does not decode: {e}")))?;
            let layout = Layout::of(&a).map_err(|e| bad_row(e.to_string()))?;
            let state = FileState::from_i64(state);
            let done = match state {
                FileState::Sent | FileState::Received => a.size,
                FileState::Uploading => (recorded * u64::from(a.chunk_size)).min(a.size),
                FileState::Downloading => {
                    let r = Received::from_bytes(
                        layout.chunks(),
                        received.as_deref().unwrap_or_default(),
                    );
                    (r.count() * u64::from(a.chunk_size)).min(a.size)
                }
                FileState::Failed => 0,
            };
            out.push(FileRow {
                info: FileInfo {
                    id,
                    message,
                    group,
                    outgoing,
                    name: safe_file_name(&a.name),
                    mime: a.mime.clone(),
                    kind: AttachmentKind::try_from(a.kind).unwrap_or(AttachmentKind::File),
                    size: a.size,
                    state,
                    done,
                    error,
                    has_thumbnail: !a.thumbnail.is_empty(),
                    saved_to: saved_to.map(PathBuf::from),
                },
                description: a,
                done: recorded,
                received,
                seed,
            });
        }
        Ok(out)
    }

    /// File number `id`'s record.
    fn file_row(&self, id: i64) -> Result<FileRow, ProfileError> {
        self.file_rows("f.id = ?1", [id])?.pop().ok_or_else(|| {
            ProfileError::Invalid(format!("there is no file #{id}: `pigeon files` lists them"))
        })
    }

    /// `lines` as read with the number of the file each carries, that file put in by `set`.
    pub(in crate::profile) fn with_files<T>(
        &self,
        lines: Vec<(T, Option<i64>)>,
        set: impl Fn(&mut T, FileInfo),
    ) -> Result<Vec<T>, ProfileError> {
        lines
            .into_iter()
            .map(|(mut line, file)| {
                if let Some(id) = file {
                    set(&mut line, self.file(id)?);
                }
                Ok(line)
            })
            .collect()
    }

    /// The file of transcript line `message`, if it has one.
    ///
    /// # Errors
    /// On database failure.
    pub fn file_of_message(&self, message: i64) -> Result<Option<FileInfo>, ProfileError> {
        Ok(self
            .file_rows("f.message = ?1", [message])?
            .pop()
            .map(|r| r.info))
    }

    /// File number `id`.
    ///
    /// # Errors
    /// [`ProfileError::NoContact`] when there is none.
    pub fn file(&self, id: i64) -> Result<FileInfo, ProfileError> {
        Ok(self.file_row(id)?.info)
    }

    /// The files of a conversation (or all), oldest first.
    ///
    /// # Errors
    /// On database failure.
    pub fn files(&self, group: Option<GroupId>) -> Result<Vec<FileInfo>, ProfileError> {
        Ok(self
            .file_rows("(?1 IS NULL OR f.group_row = ?1)", params![group])?
            .into_iter()
            .map(|r| r.info)
            .collect())
    }

    /// A picture's thumbnail (a JPEG), if it came with one.
    ///
    /// # Errors
    /// On database failure, or when there is no such file.
    pub fn file_thumbnail(&self, id: i64) -> Result<Option<Vec<u8>>, ProfileError> {
        let a = self.file_row(id)?.description;
        Ok((!a.thumbnail.is_empty() && is_jpeg(&a.thumbnail)).then_some(a.thumbnail))
    }

    /// Uploads to carry on with.
    ///
    /// # Errors
    /// On database failure.
    pub fn pending_uploads(&self) -> Result<Vec<PendingUpload>, ProfileError> {
        let mut out = Vec::new();
        for row in self.file_rows("f.state = ?1", [UPLOADING])? {
            let a = &row.description;
            let seed: [u8; 32] = row
                .seed
                .as_deref()
                .and_then(|s| s.as_slice().try_into().ok())
                .ok_or_else(|| bad_row("its seed is missing or not 32 bytes"))?;
            out.push(PendingUpload {
                id: row.info.id,
                name: row.info.name.clone(),
                secrets: FileSecrets::from_seed(seed),
                layout: Layout::of(a).map_err(|e| bad_row(e.to_string()))?,
                relay: RelayLink::from_payload_bytes(&a.relay)
                    .map_err(|e| bad_row(format!("its relay: {e}")))?,
                done: row.done,
                path: self.sealed_path(&a.blob_id),
            });
        }
        Ok(out)
    }

    /// Records that chunks `0..done` of upload `id` are on the relay.
    ///
    /// # Errors
    /// On database failure.
    pub fn upload_progress(&self, id: i64, done: u64) -> Result<(), ProfileError> {
        self.conn
            .execute(
                "UPDATE files SET done = max(done, ?1), updated_at = ?2 WHERE id = ?3 AND state = ?4",
                params![to_i64(done), now_ms(), id, UPLOADING],
            )
            .map_err(db("recording an upload"))?;
        Ok(())
    }

    /// Upload `id` is whole on the relay and its log takes no more posts: its message goes to
    /// the conversation (as a draft, sent like any text), and its seed is forgotten.
    ///
    /// # Errors
    /// On database failure.
    pub fn upload_sent(&self, id: i64) -> Result<(), ProfileError> {
        self.tx(|| {
            let FileRow {
                info,
                description: a,
                ..
            } = self.file_row(id)?;
            if info.state != FileState::Uploading {
                return Ok(());
            }
            let (group, uid, sent_at, relay_msg_id): (GroupId, Vec<u8>, i64, Vec<u8>) = self
                .conn
                .query_row(
                    "SELECT group_row, uid, sent_at, relay_msg_id FROM group_messages WHERE id = ?1",
                    [info.message],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .map_err(db("reading a file's line"))?;
            let content = pigeon_e2ee::Content {
                id: uid,
                sent_at_ms: u64::try_from(sent_at).unwrap_or(0),
                body: Some(Body::Attachment(Box::new(a))),
            };
            self.conn
                .execute(
                    "INSERT INTO group_drafts (group_row, content, relay_msg_id) VALUES (?1, ?2, ?3)",
                    params![group, content.encode_to_vec(), relay_msg_id],
                )
                .map_err(db("sending a file's message"))?;
            self.conn
                .execute(
                    "UPDATE files SET state = ?1, seed = NULL, updated_at = ?2 WHERE id = ?3",
                    params![SENT, now_ms(), id],
                )
                .map_err(db("sending a file's message"))?;
            self.drive_with(group, false)
        })
    }

    /// Records that upload or download `id` cannot go on, and why.
    ///
    /// # Errors
    /// On database failure.
    pub fn file_failed(&self, id: i64, why: &str) -> Result<(), ProfileError> {
        self.conn
            .execute(
                "UPDATE files SET state = ?1, error = ?2, seed = NULL, updated_at = ?3 WHERE id = ?4",
                params![FAILED, why, now_ms(), id],
            )
            .map_err(db("recording a failed file"))?;
        Ok(())
    }

    /// Keeps a file description that arrived in a conversation (from log position `seq`):
    /// its line in the transcript, and a download to make. `None` when it was here already.
    pub(super) fn receive_file(
        &self,
        row: &GroupRow,
        seq: u64,
        from: &super::LineSender<'_>,
        content: &pigeon_e2ee::Content,
        a: &Attachment,
    ) -> Result<Option<i64>, ProfileError> {
        RelayLink::from_payload_bytes(&a.relay).map_err(|e| {
            ProfileError::E2ee(pigeon_e2ee::E2eeError::BadInput {
                what: "file",
                reason: format!("its relay is invalid: {e}"),
            })
        })?;
        let Some(message) = self.insert_log_line(row, seq, from, content, &a.caption)? else {
            return Ok(None);
        };
        let mut kept = a.clone();
        // The receiver's own judgement of what it is, from the bytes once they are here; a
        // thumbnail that is not a JPEG is not kept.
        kept.mime = String::new();
        if !is_jpeg(&kept.thumbnail) {
            kept.thumbnail.clear();
        }
        self.conn
            .execute(
                "INSERT INTO files (message, group_row, outgoing, description, state, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    message,
                    row.id,
                    from.own,
                    kept.encode_to_vec(),
                    DOWNLOADING,
                    now_ms()
                ],
            )
            .map_err(db("saving a file"))?;
        Ok(Some(message))
    }

    /// Downloads to carry on with.
    ///
    /// # Errors
    /// On database failure.
    pub fn pending_downloads(&self) -> Result<Vec<PendingDownload>, ProfileError> {
        let mut out = Vec::new();
        for row in self.file_rows("f.state = ?1", [DOWNLOADING])? {
            let a = &row.description;
            let layout = Layout::of(a).map_err(|e| bad_row(e.to_string()))?;
            let fixed = |v: &[u8]| -> Result<[u8; 32], ProfileError> {
                v.try_into()
                    .map_err(|_| bad_row("a key or id is not 32 bytes"))
            };
            out.push(PendingDownload {
                id: row.info.id,
                name: row.info.name.clone(),
                key: fixed(&a.key)?,
                blob_id: fixed(&a.blob_id)?,
                read_cap: fixed(&a.read_cap)?,
                relay: RelayLink::from_payload_bytes(&a.relay)
                    .map_err(|e| bad_row(format!("its relay: {e}")))?,
                cursor: row.done,
                received: Received::from_bytes(
                    layout.chunks(),
                    row.received.as_deref().unwrap_or_default(),
                ),
                layout,
                path: self.sealed_path(&a.blob_id),
            });
        }
        Ok(out)
    }

    /// Records a download's progress: the log is read up to `cursor`, and `received` are
    /// here. Call only once the chunks are durably written.
    ///
    /// # Errors
    /// On database failure.
    pub fn download_progress(
        &self,
        id: i64,
        cursor: u64,
        received: &Received,
    ) -> Result<(), ProfileError> {
        self.conn
            .execute(
                "UPDATE files SET done = ?1, received = ?2, updated_at = ?3 WHERE id = ?4 AND state = ?5",
                params![to_i64(cursor), received.as_bytes(), now_ms(), id, DOWNLOADING],
            )
            .map_err(db("recording a download"))?;
        Ok(())
    }

    /// Every chunk of download `id` is here: checks the whole against the sender's SHA-256
    /// and judges its media type from its bytes. A file that does not match is failed and its
    /// chunks deleted.
    ///
    /// # Errors
    /// [`ProfileError::Invalid`] saying what is wrong; on database failure.
    pub fn download_complete(&self, id: i64) -> Result<FileInfo, ProfileError> {
        let mut a = self.file_row(id)?.description;
        let path = self.sealed_path(&a.blob_id);
        let mut head = Vec::new();
        let checked = self.open_sealed(&a, &path, |chunk| {
            if head.len() < 8192 {
                head.extend_from_slice(&chunk[..chunk.len().min(8192 - head.len())]);
            }
            Ok(())
        });
        match checked {
            Ok(()) => {
                a.mime = sniff_mime(&head);
                self.conn
                    .execute(
                        "UPDATE files SET state = ?1, description = ?2, received = NULL,
                           updated_at = ?3 WHERE id = ?4",
                        params![RECEIVED, a.encode_to_vec(), now_ms(), id],
                    )
                    .map_err(db("recording a download"))?;
                self.file(id)
            }
            Err(e @ ProfileError::Invalid(_)) => {
                let _ = std::fs::remove_file(&path);
                self.file_failed(id, &e.to_string())?;
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Opens the sealed chunks at `path` in order, handing each file chunk to `each`, and
    /// checks the whole against the description's SHA-256.
    fn open_sealed(
        &self,
        a: &Attachment,
        path: &Path,
        mut each: impl FnMut(&[u8]) -> Result<(), ProfileError>,
    ) -> Result<(), ProfileError> {
        let layout = Layout::of(a).map_err(|e| bad_row(e.to_string()))?;
        let key: [u8; 32] = a
            .key
            .as_slice()
            .try_into()
            .map_err(|_| bad_row("its key is not 32 bytes"))?;
        let mut file = std::fs::File::open(path).map_err(file_err("opening", path))?;
        let mut hash = FileHash::default();
        let mut buf = vec![0; layout.chunk_size as usize + crate::attachment::TAG_LEN];
        for index in 0..layout.chunks() {
            let len = layout.plain_len(index) + crate::attachment::TAG_LEN;
            file.seek(SeekFrom::Start(layout.sealed_offset(index)))
                .map_err(file_err("reading", path))?;
            file.read_exact(&mut buf[..len])
                .map_err(file_err("reading", path))?;
            let plain = layout.open(&key, index, &buf[..len]).map_err(|e| {
                ProfileError::Invalid(format!("the file kept here is damaged: {e}"))
            })?;
            hash.update(&plain);
            each(&plain)?;
        }
        if hash.finish().as_slice() != a.sha256.as_slice() {
            return Err(ProfileError::Invalid(FileError::WrongHash.to_string()));
        }
        Ok(())
    }

    /// File `id`'s record when the whole file is on this device (sent, or received and
    /// checked).
    fn file_here(&self, id: i64) -> Result<FileRow, ProfileError> {
        let row = self.file_row(id)?;
        match row.info.state {
            FileState::Received | FileState::Sent | FileState::Uploading => Ok(row),
            state => Err(ProfileError::NotNow(format!(
                "{} is not here yet ({})",
                row.info.name,
                state.as_str()
            ))),
        }
    }

    /// The whole of file `id` (sent, or received and checked), opened.
    ///
    /// # Errors
    /// [`ProfileError::NotNow`] for a file still on its way; as [`Self::export_file`].
    pub fn read_file(&self, id: i64) -> Result<Vec<u8>, ProfileError> {
        let a = self.file_here(id)?.description;
        let mut out = Vec::with_capacity(usize::try_from(a.size).unwrap_or(0));
        self.open_sealed(&a, &self.sealed_path(&a.blob_id), |chunk| {
            out.extend_from_slice(chunk);
            Ok(())
        })?;
        Ok(out)
    }

    /// Writes file `id` (sent, or received and checked) to `dest`: a directory (it keeps
    /// its name there, with a number added when that name is taken) or a file path. Written
    /// beside the target and renamed over it, so nothing half-written is ever left under its
    /// name. Returns where it went.
    ///
    /// # Errors
    /// [`ProfileError::NotNow`] for a file still on its way; [`ProfileError::File`] when the
    /// destination cannot be written.
    pub fn export_file(&self, id: i64, dest: &Path) -> Result<PathBuf, ProfileError> {
        let FileRow {
            info,
            description: a,
            ..
        } = self.file_here(id)?;
        let target = if dest.is_dir() {
            free_name(dest, &info.name)
        } else {
            dest.to_owned()
        };
        let tmp = target.with_file_name(format!(
            ".{}.pigeon-part",
            target
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ));
        let mut out = std::fs::File::create(&tmp).map_err(file_err("writing", &tmp))?;
        let written = self.open_sealed(&a, &self.sealed_path(&a.blob_id), |chunk| {
            out.write_all(chunk).map_err(file_err("writing", &tmp))
        });
        if let Err(e) = written.and_then(|()| out.sync_all().map_err(file_err("writing", &tmp))) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, &target).map_err(file_err("saving", &target))?;
        self.conn
            .execute(
                "UPDATE files SET saved_to = ?1 WHERE id = ?2",
                params![target.to_string_lossy(), id],
            )
            .map_err(db("recording where a file went"))?;
        Ok(target)
    }
}

/// `name` in `dir`, or `name (2)`, `name (3)`… when it is taken.
fn free_name(dir: &Path, name: &str) -> PathBuf {
    let first = dir.join(name);
    if !first.exists() {
        return first;
    }
    let (stem, ext) = match name.rsplit_once('.') {
        Some((s, e)) if !s.is_empty() => (s, format!(".{e}")),
        _ => (name, String::new()),
    };
    (2..10_000)
        .map(|n| dir.join(format!("{stem} ({n}){ext}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbnails_are_small_jpegs_of_pictures_only() {
        let mut png = Vec::new();
        let picture = image::RgbImage::from_fn(1200, 800, |x, y| {
            image::Rgb([
                u8::try_from(x % 256).unwrap_or(0),
                u8::try_from(y % 256).unwrap_or(0),
                128,
            ])
        });
        picture
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .expect("png");
        assert_eq!(sniff_mime(&png), "image/png");
        let thumb = make_thumbnail(&png).expect("a thumbnail");
        assert!(is_jpeg(&thumb) && thumb.len() <= MAX_THUMBNAIL);
        let small = image::load_from_memory(&thumb).expect("decodes");
        assert!(small.width() <= 320 && small.height() <= 320);
        assert_eq!(make_thumbnail(b"not a picture at all"), None);
        assert_eq!(sniff_mime(b"hello"), "application/octet-stream");
        assert!(!is_picture("image/svg+xml"));
    }

    #[test]
    fn a_taken_name_gets_a_number() {
        let dir = tempfile::tempdir().expect("dir");
        assert_eq!(free_name(dir.path(), "a.txt"), dir.path().join("a.txt"));
        std::fs::write(dir.path().join("a.txt"), b"x").expect("write");
        assert_eq!(free_name(dir.path(), "a.txt"), dir.path().join("a (2).txt"));
        std::fs::write(dir.path().join("noext"), b"x").expect("write");
        assert_eq!(free_name(dir.path(), "noext"), dir.path().join("noext (2)"));
    }
}
