//! The group commit's fsync, made on a descriptor of the store's own.
//!
//! fjall's `Database::persist` fsyncs its journal while holding the journal lock, and a batch
//! commit holds the same lock while it writes the journal *and* inserts every entry into the
//! memtables. So through `persist`, one round's fsync waited for the next round's memtable
//! inserts (tens of milliseconds for a large round on a busy machine), and the next round's
//! commit waited for the fsync: the writer and the sync thread took turns instead of
//! overlapping, and every caller paid both.
//!
//! Instead the writer hands each committed round's journal bytes to the kernel under the lock
//! (`PersistMode::Buffer`: a `write` of at most fjall's 8 KiB buffer), and the sync thread
//! fdatasyncs the active journal file through its own descriptor, holding no lock of fjall's.
//!
//! # Why this is as durable as `persist`
//! * The active journal is the file with the highest number, `<n>.jnl`, in the database
//!   directory: fjall names its journals so and only ever rotates to `n + 1`. The sync thread
//!   looks the newest one up *after* the round's bytes were written (it learns of the round
//!   only then).
//! * If that is still the file the round was written to, its fdatasync covers the round. If fjall
//!   rotated in between, it fsynced the old file under its lock before creating the new one, so
//!   the round was durable before the new file existed; fsyncing the new one is then merely
//!   harmless. Several rotations in between change nothing.
//! * A journal is deleted only once every keyspace has flushed what it holds to fsynced tables.
//! * A write-back error is reported to the next fsync on any descriptor of the file, including
//!   one opened after the error (Linux since 4.13), so a failure is not missed by opening late.
//!   Any error here is final, as a failed `persist` is.
//!
//! The layout is fjall 3's; [`JournalSync::open`] fails when it finds no journal, so a fjall
//! that names its journals otherwise stops the store at open instead of weakening it.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// The active journal's number, from a directory listing; an error when there is none.
fn newest_journal(dir: &Path) -> io::Result<u64> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(number) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".jnl"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        newest = newest.max(Some(number));
    }
    newest.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "no journal (<n>.jnl) in {}: this fjall lays out its files differently",
                dir.display()
            ),
        )
    })
}

/// Fdatasyncs the active fjall journal of one database directory.
pub(super) struct JournalSync {
    dir: PathBuf,
    /// The newest journal seen, and a descriptor of it.
    current: (u64, File),
}

impl JournalSync {
    /// Finds the active journal of the database in `dir`.
    pub(super) fn open(dir: &Path) -> io::Result<Self> {
        let number = newest_journal(dir)?;
        let file = File::open(journal_path(dir, number))?;
        Ok(Self {
            dir: dir.to_owned(),
            current: (number, file),
        })
    }

    /// Makes everything written to the journal so far durable (see the module docs).
    pub(super) fn sync(&mut self) -> io::Result<()> {
        let newest = newest_journal(&self.dir)?;
        if newest != self.current.0 {
            self.current = (newest, File::open(journal_path(&self.dir, newest))?);
        }
        self.current.1.sync_data()
    }
}

fn journal_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number}.jnl"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a test fails by panicking")]
mod tests {
    use super::*;

    #[test]
    fn the_newest_journal_is_the_highest_number() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "3.jnl",
            "12.jnl",
            "9.jnl",
            "lock",
            "40.tmp",
            "x.jnl",
            "keyspaces",
        ] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        assert_eq!(newest_journal(dir.path()).unwrap(), 12);
        let mut sync = JournalSync::open(dir.path()).unwrap();
        sync.sync().unwrap();
        std::fs::write(dir.path().join("13.jnl"), b"").unwrap();
        sync.sync().unwrap();
        assert_eq!(sync.current.0, 13);
    }

    /// The layout this module relies on, checked against the fjall in use: a journal rotates to
    /// the next number and the sync follows it.
    #[test]
    fn the_sync_follows_fjall_to_its_next_journal() {
        use fjall::{CompressionType, Database, KeyspaceCreateOptions, PersistMode};
        let dir = tempfile::tempdir().unwrap();
        // As the store opens it: the journal uncompressed, so it grows as it does there.
        let db = Database::builder(dir.path())
            .manual_journal_persist(true)
            .journal_compression(CompressionType::None)
            .open()
            .unwrap();
        let ks = db
            .keyspace("k", || {
                KeyspaceCreateOptions::default()
                    .manual_journal_persist(true)
                    .max_memtable_size(1024 * 1024)
            })
            .unwrap();
        let mut sync = JournalSync::open(dir.path()).unwrap();
        let first = sync.current.0;
        let value = vec![7u8; 64 * 1024];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut key = 0u32;
        // fjall starts a new journal at the first flush after 64 MB; bounded in count and time.
        while sync.current.0 == first && key < 4096 && std::time::Instant::now() < deadline {
            for _ in 0..64 {
                ks.insert(key.to_be_bytes(), value.as_slice()).unwrap();
                key += 1;
            }
            db.persist(PersistMode::Buffer).unwrap();
            sync.sync().unwrap();
            // Flushes run on fjall's workers: give them a moment.
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(
            sync.current.0 > first,
            "no journal after {first} within {key} writes"
        );
        assert_eq!(newest_journal(dir.path()).unwrap(), sync.current.0);
        ks.insert(b"last", b"x").unwrap();
        db.persist(PersistMode::Buffer).unwrap();
        sync.sync().unwrap();
    }

    #[test]
    fn a_directory_without_journals_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = JournalSync::open(dir.path()).err().unwrap();
        assert!(err.to_string().contains("no journal"), "{err}");
    }
}
