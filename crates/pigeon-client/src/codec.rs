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
//! ([`LARGE`]: a group's tree, its message secrets at many members), and small ones as JSON, as
//! before. Every key openmls stores (a group id, a hash reference, a signature key, an X-Wing
//! encryption key of 1,216 bytes) is far below that size, so keys are JSON as in every profile
//! made before, and those profiles' rows are found as they were. A MessagePack value starts with
//! [`MSGPACK`]; anything else is read as JSON, which is how values written before are read.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The first byte of a value stored as MessagePack: 0xC1 is the one byte MessagePack never
/// uses, and no JSON text starts with it (it is not even UTF-8).
const MSGPACK: u8 = 0xc1;

/// A value whose MessagePack form is longer than this is stored as MessagePack.
const LARGE: usize = 16 * 1024;

/// openmls's stored values: MessagePack when large, JSON when small (see the module's text).
#[derive(Default, Debug)]
pub struct StateCodec;

/// A stored value that could not be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateCodecError {
    /// JSON (small values, and everything stored before MessagePack).
    #[error("MLS state stored as JSON")]
    Json(#[source] serde_json::Error),
    /// Writing MessagePack.
    #[error("MLS state written as MessagePack")]
    Encode(#[source] rmp_serde::encode::Error),
    /// Reading MessagePack.
    #[error("MLS state stored as MessagePack")]
    Decode(#[source] rmp_serde::decode::Error),
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
    openmls_sqlite_storage::SqliteStorageProvider::<StateCodec, &mut rusqlite::Connection>::new(
        &mut conn,
    )
    .run_migrations()
    .map_err(|e| crate::ProfileError::Db {
        doing: "creating openmls's tables",
        reason: e.to_string(),
    })?;
    Ok(conn)
}

impl openmls_sqlite_storage::Codec for StateCodec {
    type Error = StateCodecError;

    fn to_vec<T: Serialize>(value: &T) -> Result<Vec<u8>, Self::Error> {
        let mut packed = vec![MSGPACK];
        rmp_serde::encode::write_named(&mut packed, value).map_err(StateCodecError::Encode)?;
        if packed.len() > LARGE {
            return Ok(packed);
        }
        serde_json::to_vec(value).map_err(StateCodecError::Json)
    }

    fn from_slice<T: DeserializeOwned>(slice: &[u8]) -> Result<T, Self::Error> {
        match slice.split_first() {
            Some((&MSGPACK, packed)) => {
                rmp_serde::from_slice(packed).map_err(StateCodecError::Decode)
            }
            _ => serde_json::from_slice(slice).map_err(StateCodecError::Json),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openmls_sqlite_storage::{Codec as _, SqliteStorageProvider};
    use pigeon_e2ee::content::{Text, body::Body};
    use pigeon_e2ee::{Change, Content, Group, Identity, Opened, Roster, RosterEntry, Suite};
    use rusqlite::Connection;

    type Storage<'a> = SqliteStorageProvider<StateCodec, &'a Connection>;

    struct Device {
        crypto: pigeon_e2ee::CryptoProvider,
        conn: Connection,
        identity: Identity,
    }

    impl Device {
        fn new() -> Self {
            let mut conn = Connection::open_in_memory().expect("db");
            SqliteStorageProvider::<StateCodec, &mut Connection>::new(&mut conn)
                .run_migrations()
                .expect("migrations");
            let crypto = pigeon_e2ee::crypto().expect("crypto");
            let identity =
                Identity::generate(&pigeon_e2ee::Provider::new(&crypto, Storage::new(&conn)))
                    .expect("identity");
            Self {
                crypto,
                conn,
                identity,
            }
        }

        fn mls(&self) -> pigeon_e2ee::Provider<'_, Storage<'_>> {
            pigeon_e2ee::Provider::new(&self.crypto, Storage::new(&self.conn))
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
    }

    /// Checks that every key of every openmls table of `devices` is JSON, counting them per
    /// table into `seen`.
    fn scan_keys(devices: &[&Device], seen: &mut std::collections::BTreeMap<&'static str, usize>) {
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

    /// A group of 24 X-Wing devices stored through the codec: its tree and message secrets
    /// are stored as MessagePack, every key of every openmls table as JSON (byte for byte what
    /// a profile made before stored), and the group, loaded back from the database by both
    /// sides, carries a message.
    #[test]
    fn large_values_are_messagepack_keys_stay_json_and_groups_load_back() {
        let admin = Device::new();
        let roster = Roster {
            name: "codec".to_owned(),
            members: vec![admin.entry(0)],
            direct: false,
            devices: false,
        };
        let mut group =
            Group::create(&admin.mls(), &admin.identity, Suite::XWing, &roster).expect("group");
        let others: Vec<Device> = (1..24).map(|_| Device::new()).collect();
        let adds = others
            .iter()
            .zip(1..)
            .map(|(d, i)| {
                let kp = d
                    .identity
                    .key_package(&d.mls(), Suite::XWing)
                    .expect("key package");
                (kp, d.entry(i))
            })
            .collect();
        let built = group
            .commit(&admin.mls(), &admin.identity, Change::AddMany(adds))
            .expect("commit");
        // Before the merge, the admin's new leaf key pair is stored under its X-Wing public
        // key (1,216 bytes: the largest key openmls stores).
        let mut seen = std::collections::BTreeMap::new();
        scan_keys(&[&admin], &mut seen);
        group.merge_pending(&admin.mls()).expect("merge");
        let welcome = built.welcome.expect("welcome");
        let bob = &others[0];
        let joined = Group::join_group(&bob.mls(), &welcome).expect("join");
        let id = group.id();
        assert_eq!(joined.id(), id);
        drop((group, joined));

        let stored = |d: &Device, kind: &str| -> Vec<u8> {
            d.conn
                .query_row(
                    "SELECT group_data FROM openmls_group_data WHERE data_type = ?1",
                    [kind],
                    |r| r.get(0),
                )
                .expect("stored")
        };
        for d in [&admin, bob] {
            let tree = stored(d, "tree");
            assert_eq!(tree[0], MSGPACK, "the tree is large: MessagePack");
            assert!(tree.len() > LARGE);
            let context = stored(d, "context");
            assert!(
                serde_json::from_slice::<serde_json::Value>(&context).is_ok(),
                "a small value stays JSON"
            );
        }
        // The admin and a member hold group state; a device added but not joined yet still
        // holds its key package.
        scan_keys(&[&admin, bob, &others[1]], &mut seen);
        for table in [
            "openmls_group_data",
            "openmls_epoch_keys_pairs",
            "openmls_signature_keys",
            "openmls_key_packages",
        ] {
            assert!(seen.contains_key(table), "no key of {table} was looked at");
        }

        let mut group = Group::load(&admin.mls(), &id).expect("loads back");
        let mut joined = Group::load(&bob.mls(), &id).expect("loads back");
        let sealed = group
            .seal(&admin.mls(), &admin.identity, &text("after a reload"))
            .expect("seal");
        match joined.open(&bob.mls(), &sealed).expect("open") {
            Opened::Content { content, .. } => assert_eq!(content, text("after a reload")),
            _ => panic!("not the message"),
        }
    }

    /// What profiles stored before (all JSON) is read; small values are written as JSON, as
    /// before; large ones as MessagePack, read back the same; garbage is refused in words.
    #[test]
    fn json_still_reads_and_garbage_is_refused_in_words() {
        let small = vec![7u8; 100];
        let json = serde_json::to_vec(&small).expect("json");
        assert_eq!(StateCodec::to_vec(&small).expect("encode"), json);
        assert_eq!(
            StateCodec::from_slice::<Vec<u8>>(&json).expect("read"),
            small
        );
        let large: Vec<u8> = (0..=255u8).cycle().take(40_000).collect();
        let packed = StateCodec::to_vec(&large).expect("encode");
        assert_eq!(packed[0], MSGPACK);
        assert!(packed.len() < serde_json::to_vec(&large).expect("json").len() / 2);
        assert_eq!(
            StateCodec::from_slice::<Vec<u8>>(&packed).expect("read"),
            large
        );
        let json_large = serde_json::to_vec(&large).expect("json");
        assert_eq!(
            StateCodec::from_slice::<Vec<u8>>(&json_large).expect("read"),
            large
        );
        for garbage in [&b""[..], b"\xc1", b"\xc1\xc1", b"{\"a\":", b"\xff\x00"] {
            let e = StateCodec::from_slice::<Vec<u8>>(garbage).expect_err("refused");
            assert!(e.to_string().starts_with("MLS state stored as"), "{e}");
        }
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
        let truncated = &packed[..packed.len() / 2];
        assert!(StateCodec::from_slice::<Vec<u8>>(truncated).is_err());
    }
}
