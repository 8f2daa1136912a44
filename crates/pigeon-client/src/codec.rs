//! How a profile stores openmls's state: [`StateCodec`].
//!
//! openmls hands its storage every value through `serde`, and `openmls_sqlite_storage` encodes
//! keys and values with one codec. JSON, which profiles used first, writes every byte of a key
//! as a decimal number: the ratchet tree of a 1,000-device group (1.5 MB of X-Wing keys) became
//! about 5 MB of text, and writing it was more than half of processing a commit (a profile of
//! `pigeon bench group --members 1000`). MessagePack writes such a byte in one or two bytes, a
//! third of the time, and reads it back as fast (both through `serde`, so openmls's types need
//! nothing). Structs keep their field names (`write_named`), as JSON did, so a later openmls that
//! adds a field with a default still reads what this one wrote.
//!
//! Keys must stay byte for byte what they were: `openmls_sqlite_storage` finds rows by comparing
//! the encoded key in SQL. So a value is stored as MessagePack only when it is large
//! (over 16 KiB: a group's tree, its message secrets at many members), and small ones as JSON, as
//! before. Every key openmls stores (a group id, a hash reference, a signature key, an X-Wing
//! encryption key of 1,216 bytes) is far below that size, so keys are JSON as in every profile
//! made before, and those profiles' rows are found as they were. A MessagePack value starts with
//! [`MSGPACK`]; anything else is read as JSON, which is how values written before are read.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The first byte of a value stored as MessagePack: 0xC1 is the one byte MessagePack never
/// uses, and no JSON text starts with it (it is not even UTF-8).
const MSGPACK: u8 = 0xc1;

/// openmls's stored values: MessagePack when their MessagePack form is more than `LARGE`
/// bytes, JSON otherwise (see the module's text). [`StateCodec`] is the one profiles use;
/// other thresholds exist for tests (0: everything MessagePack; `usize::MAX`: everything
/// JSON, as profiles stored it before).
#[derive(Default, Debug)]
pub struct StateCodecWith<const LARGE: usize>;

/// The codec of profiles: MessagePack from 16 KiB up.
pub type StateCodec = StateCodecWith<{ 16 * 1024 }>;

/// A stored value that could not be written or read; the text says which and why.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateCodecError {
    /// Writing a value as JSON.
    #[error("could not write MLS state as JSON: {0}")]
    WriteJson(serde_json::Error),
    /// Writing a value as MessagePack.
    #[error("could not write MLS state as MessagePack: {0}")]
    WriteMsgpack(rmp_serde::encode::Error),
    /// Reading a value stored as JSON (small values, and everything stored before).
    #[error("could not read MLS state stored as JSON: {0}")]
    ReadJson(serde_json::Error),
    /// Reading a value stored as MessagePack.
    #[error("could not read MLS state stored as MessagePack: {0}")]
    ReadMsgpack(rmp_serde::decode::Error),
    /// A MessagePack value followed by more bytes.
    #[error("could not read MLS state stored as MessagePack: {0} bytes follow the value")]
    TrailingBytes(usize),
}

/// openmls's storage as a profile has it, on a connection to the profile's database.
pub type StateStorage<'a> =
    openmls_sqlite_storage::SqliteStorageProvider<StateCodec, &'a rusqlite::Connection>;

/// A database in memory with openmls's tables, for measuring what storing the state costs a
/// client (`pigeon bench group`) without measuring the disk.
///
/// # Errors
/// When SQLite cannot open it or openmls's migrations fail.
pub fn memory_state() -> Result<rusqlite::Connection, crate::ProfileError> {
    let mut conn = rusqlite::Connection::open_in_memory().map_err(|e| crate::ProfileError::Db {
        doing: "opening a database in memory",
        reason: e.to_string(),
    })?;
    state_tables(&mut conn)?;
    Ok(conn)
}

/// Creates or updates openmls's tables in `conn` (`openmls_sqlite_storage`'s migrations).
pub(crate) fn state_tables(conn: &mut rusqlite::Connection) -> Result<(), crate::ProfileError> {
    openmls_sqlite_storage::SqliteStorageProvider::<StateCodec, &mut rusqlite::Connection>::new(
        conn,
    )
    .run_migrations()
    .map_err(|e| crate::ProfileError::Db {
        doing: "preparing the encryption state tables",
        reason: e.to_string(),
    })
}

impl<const LARGE: usize> StateCodecWith<LARGE> {
    /// Reads a stored value: MessagePack after its mark, JSON otherwise.
    ///
    /// # Errors
    /// When the bytes are not a whole value of type `T` in the format they claim.
    pub fn read<T: DeserializeOwned>(stored: &[u8]) -> Result<T, StateCodecError> {
        match stored.split_first() {
            Some((&MSGPACK, mut packed)) => {
                let value = rmp_serde::decode::from_read(&mut packed)
                    .map_err(StateCodecError::ReadMsgpack)?;
                if !packed.is_empty() {
                    return Err(StateCodecError::TrailingBytes(packed.len()));
                }
                Ok(value)
            }
            _ => serde_json::from_slice(stored).map_err(StateCodecError::ReadJson),
        }
    }
}

impl<const LARGE: usize> openmls_sqlite_storage::Codec for StateCodecWith<LARGE> {
    type Error = StateCodecError;

    fn to_vec<T: Serialize>(value: &T) -> Result<Vec<u8>, Self::Error> {
        let mut packed = zeroize::Zeroizing::new(vec![MSGPACK]);
        rmp_serde::encode::write_named(&mut *packed, value)
            .map_err(StateCodecError::WriteMsgpack)?;
        if packed.len() > LARGE {
            return Ok(std::mem::take(&mut *packed));
        }
        // Small: stored as JSON, as before, and the MessagePack copy (which may hold a private
        // key) is wiped.
        serde_json::to_vec(value).map_err(StateCodecError::WriteJson)
    }

    fn from_slice<T: DeserializeOwned>(slice: &[u8]) -> Result<T, Self::Error> {
        Self::read(slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openmls_sqlite_storage::{Codec, SqliteStorageProvider};
    use pigeon_e2ee::content::{Text, body::Body};
    use pigeon_e2ee::{Change, Content, Group, Identity, Opened, Roster, RosterEntry, Suite};
    use rusqlite::Connection;
    use std::collections::BTreeMap;

    /// Everything JSON: what profiles stored before this codec.
    type JsonOnly = StateCodecWith<{ usize::MAX }>;
    /// Everything MessagePack.
    type PackedOnly = StateCodecWith<0>;

    type Mls<'a, C> = pigeon_e2ee::Provider<'a, SqliteStorageProvider<C, &'a Connection>>;

    struct Device {
        crypto: pigeon_e2ee::CryptoProvider,
        conn: Connection,
        identity: Identity,
    }

    impl Device {
        fn new<C: Codec>() -> Self {
            let mut conn = Connection::open_in_memory().expect("db");
            SqliteStorageProvider::<C, &mut Connection>::new(&mut conn)
                .run_migrations()
                .expect("migrations");
            let crypto = pigeon_e2ee::crypto().expect("crypto");
            let identity = Identity::generate(&pigeon_e2ee::Provider::new(
                &crypto,
                SqliteStorageProvider::<C, _>::new(&conn),
            ))
            .expect("identity");
            Self {
                crypto,
                conn,
                identity,
            }
        }

        fn mls<C: Codec>(&self) -> Mls<'_, C> {
            pigeon_e2ee::Provider::new(&self.crypto, SqliteStorageProvider::new(&self.conn))
        }

        fn entry(&self, i: u8) -> RosterEntry {
            RosterEntry {
                key: self.identity.public_key().to_vec(),
                person: vec![i; 16],
                name: format!("member {i}"),
                device: String::new(),
                admin: i == 0,
            }
        }

        /// Every stored value of `table`'s `column`.
        fn column(&self, table: &str, column: &str) -> Vec<Vec<u8>> {
            let mut stmt = self
                .conn
                .prepare(&format!("SELECT {column} FROM {table}"))
                .expect("query");
            stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))
                .expect("rows")
                .collect::<Result<_, _>>()
                .expect("blobs")
        }

        fn stored(&self, kind: &str) -> Vec<u8> {
            self.conn
                .query_row(
                    "SELECT group_data FROM openmls_group_data WHERE data_type = ?1",
                    [kind],
                    |r| r.get(0),
                )
                .expect("stored")
        }
    }

    /// Checks that every key of every openmls table of `devices` is JSON, counting them per
    /// table into `seen`.
    fn scan_keys(devices: &[&Device], seen: &mut BTreeMap<&'static str, usize>) {
        for d in devices {
            for (table, columns) in [
                ("openmls_group_data", ["group_id"].as_slice()),
                ("openmls_encryption_keys", &["public_key"]),
                ("openmls_epoch_keys_pairs", &["group_id", "epoch_id"]),
                ("openmls_signature_keys", &["public_key"]),
                ("openmls_key_packages", &["key_package_ref"]),
                ("openmls_own_leaf_nodes", &["group_id"]),
                ("openmls_proposals", &["group_id", "proposal_ref"]),
                ("openmls_psks", &["psk_id"]),
            ] {
                for column in columns {
                    for key in d.column(table, column) {
                        assert!(
                            serde_json::from_slice::<serde_json::Value>(&key).is_ok(),
                            "{table}.{column} is JSON"
                        );
                        *seen.entry(table).or_insert(0) += 1;
                    }
                }
            }
        }
    }

    fn text(s: &str) -> Content {
        Content {
            id: vec![7; 16],
            sent_at_ms: 1,
            body: Some(Body::Text(Text { text: s.to_owned() })),
        }
    }

    /// A group of `n` X-Wing devices made by device 0 with one batch add, stored through `C`,
    /// joined by device 1 (the others are added and have not joined). Returns the devices and
    /// the group id.
    fn group_of<C: Codec>(n: u8) -> (Vec<Device>, Vec<u8>) {
        let devices: Vec<Device> = (0..n).map(|_| Device::new::<C>()).collect();
        let admin = &devices[0];
        let roster = Roster {
            name: "codec".to_owned(),
            members: vec![admin.entry(0)],
            direct: false,
            devices: false,
        };
        let mut group = Group::create(&admin.mls::<C>(), &admin.identity, Suite::XWing, &roster)
            .expect("group");
        let adds = devices[1..]
            .iter()
            .zip(1..)
            .map(|(d, i)| {
                let kp = d
                    .identity
                    .key_package(&d.mls::<C>(), Suite::XWing)
                    .expect("key package");
                (kp, d.entry(i))
            })
            .collect();
        let built = group
            .commit(&admin.mls::<C>(), &admin.identity, Change::AddMany(adds))
            .expect("commit");
        group.merge_pending(&admin.mls::<C>()).expect("merge");
        let welcome = built.welcome.expect("welcome");
        let joined = Group::join_group(&devices[1].mls::<C>(), &welcome).expect("join");
        assert_eq!(joined.id(), group.id());
        let id = group.id();
        (devices, id)
    }

    /// Both sides load the group back through `C`; the admin refreshes its key (a commit that
    /// rewrites the tree), the member processes it, and a message goes each way.
    fn carry_on<C: Codec>(admin: &Device, member: &Device, id: &[u8]) {
        let mut group = Group::load(&admin.mls::<C>(), id).expect("loads back");
        let mut joined = Group::load(&member.mls::<C>(), id).expect("loads back");
        let commit = group
            .commit(&admin.mls::<C>(), &admin.identity, Change::Update)
            .expect("key refresh");
        group.merge_pending(&admin.mls::<C>()).expect("merge");
        assert!(matches!(
            joined
                .open(&member.mls::<C>(), &commit.commit)
                .expect("process"),
            Opened::Commit { .. }
        ));
        let say = |from: &Device, g: &mut Group, to: &Device, h: &mut Group, said: &str| {
            let sealed = g
                .seal(&from.mls::<C>(), &from.identity, &text(said))
                .expect("seal");
            match h.open(&to.mls::<C>(), &sealed).expect("open") {
                Opened::Content { content, .. } => assert_eq!(content, text(said)),
                _ => panic!("not the message"),
            }
        };
        say(admin, &mut group, member, &mut joined, "from the admin");
        say(member, &mut joined, admin, &mut group, "from the member");
    }

    /// A group stored all in JSON, as profiles made before this codec stored it, goes on
    /// through the codec: every row is found (keys stay byte for byte JSON), the tree is
    /// rewritten as MessagePack on the next commit, and messages go both ways. Every key of
    /// every openmls table is still JSON afterwards.
    #[test]
    fn a_group_stored_as_json_goes_on_and_large_values_become_messagepack() {
        let (devices, id) = group_of::<JsonOnly>(24);
        let (admin, member) = (&devices[0], &devices[1]);
        for d in [admin, member] {
            assert_ne!(d.stored("tree")[0], MSGPACK, "stored as before: JSON");
        }
        let mut seen = BTreeMap::new();
        scan_keys(&[admin, member, &devices[2]], &mut seen);
        carry_on::<StateCodec>(admin, member, &id);
        for d in [admin, member] {
            let tree = d.stored("tree");
            assert_eq!(tree[0], MSGPACK, "the tree is large: MessagePack");
            assert!(tree.len() > 16 * 1024);
            assert!(
                serde_json::from_slice::<serde_json::Value>(&d.stored("context")).is_ok(),
                "a small value stays JSON"
            );
        }
        // The admin and a member hold group state; a device added but not joined still holds
        // its key package.
        scan_keys(&[admin, member, &devices[2]], &mut seen);
        for table in [
            "openmls_group_data",
            "openmls_epoch_keys_pairs",
            "openmls_signature_keys",
            "openmls_key_packages",
        ] {
            assert!(seen.contains_key(table), "no key of {table} was looked at");
        }
    }

    /// Every kind of value openmls stores survives MessagePack: a group whose every value is
    /// MessagePack (the threshold at 0) is made, joined, loaded back, refreshed and used.
    #[test]
    fn every_stored_value_round_trips_through_messagepack() {
        let (devices, id) = group_of::<PackedOnly>(3);
        carry_on::<PackedOnly>(&devices[0], &devices[1], &id);
        let kinds: Vec<(String, Vec<u8>)> = {
            let mut stmt = devices[1]
                .conn
                .prepare("SELECT data_type, group_data FROM openmls_group_data")
                .expect("query");
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .expect("rows")
                .collect::<Result<_, _>>()
                .expect("values")
        };
        assert!(kinds.len() >= 8, "only {} kinds stored", kinds.len());
        for (kind, value) in kinds {
            assert_eq!(value[0], MSGPACK, "{kind} is MessagePack");
        }
    }

    /// What profiles stored before (all JSON) is read; small values are written as JSON, as
    /// before, and the largest key openmls stores stays JSON; large ones as MessagePack, read
    /// back the same; garbage is refused, saying what was wrong.
    #[test]
    fn json_still_reads_and_garbage_is_refused_in_words() {
        let small = vec![7u8; 100];
        let json = serde_json::to_vec(&small).expect("json");
        assert_eq!(StateCodec::to_vec(&small).expect("encode"), json);
        assert_eq!(StateCodec::read::<Vec<u8>>(&json).expect("read"), small);
        let large: Vec<u8> = (0..=255u8).cycle().take(40_000).collect();
        let packed = StateCodec::to_vec(&large).expect("encode");
        assert_eq!(packed[0], MSGPACK);
        assert!(packed.len() < serde_json::to_vec(&large).expect("json").len() / 2);
        assert_eq!(StateCodec::read::<Vec<u8>>(&packed).expect("read"), large);
        let json_large = serde_json::to_vec(&large).expect("json");
        assert_eq!(
            StateCodec::read::<Vec<u8>>(&json_large).expect("read"),
            large
        );
        // The largest key openmls stores, an X-Wing encryption key (1,216 bytes, in openmls's
        // shape `{"key":{"vec":[…]}}`, every byte at its longest in MessagePack), stays JSON.
        #[derive(serde::Serialize)]
        struct Bytes {
            vec: Vec<u8>,
        }
        #[derive(serde::Serialize)]
        struct EncryptionKey {
            key: Bytes,
        }
        let key = EncryptionKey {
            key: Bytes {
                vec: vec![0xff; 1216],
            },
        };
        assert_eq!(
            StateCodec::to_vec(&key).expect("encode"),
            serde_json::to_vec(&key).expect("json")
        );
        let read = |bytes: &[u8]| StateCodec::read::<Vec<u8>>(bytes).expect_err("refused");
        for garbage in [&b""[..], b"{\"a\":", b"\xff\x00"] {
            let e = read(garbage);
            assert!(matches!(e, StateCodecError::ReadJson(_)), "{e:?}");
            assert!(
                e.to_string()
                    .starts_with("could not read MLS state stored as JSON: ")
            );
        }
        for garbage in [&b"\xc1"[..], b"\xc1\xc1", &packed[..packed.len() / 2]] {
            let e = read(garbage);
            assert!(matches!(e, StateCodecError::ReadMsgpack(_)), "{e:?}");
            assert!(
                e.to_string()
                    .starts_with("could not read MLS state stored as MessagePack: ")
            );
        }
        let mut longer = packed.clone();
        longer.extend_from_slice(b"more");
        assert!(matches!(read(&longer), StateCodecError::TrailingBytes(4)));
    }
}
