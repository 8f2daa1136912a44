//! Records by key on a stream of their own, one entry per key (`max_messages_per_subject: 1`),
//! changed by compare-and-set on the entry's stream sequence — what JetStream's key-value
//! buckets are, on the primitives this store uses anyway (reads from the leader and
//! expected-sequence publishes). (async-nats's KV API cannot create a bucket on nats-server
//! 2.9, whose answer it fails to parse.) A deleted key keeps a small tombstone entry, so that a create racing a
//! delete is ordered by the same check.

use crate::{publish, scan};
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use pigeon_store::StoreError;

/// The header that marks a tombstone.
const H_DELETED: &str = "P-Deleted";

pub(crate) struct Bucket {
    js: jetstream::Context,
    stream: stream::Stream,
    /// Subjects are `<prefix>.<key>`.
    prefix: String,
}

/// An entry read back: its value and revision (stream sequence).
pub(crate) struct Value {
    pub(crate) value: Bytes,
    pub(crate) revision: u64,
}

impl Bucket {
    pub(crate) fn new(js: jetstream::Context, stream: stream::Stream, prefix: String) -> Self {
        Self { js, stream, prefix }
    }

    fn subject(&self, key: &str) -> String {
        format!("{}.{key}", self.prefix)
    }

    /// The newest entry under `key`, tombstones included: (is a tombstone, revision, value).
    async fn last(
        &self,
        op: &'static str,
        key: &str,
    ) -> Result<Option<(bool, u64, Bytes)>, StoreError> {
        Ok(crate::get::last(op, &self.stream, &self.subject(key))
            .await?
            .map(|m| (m.headers.get(H_DELETED).is_some(), m.sequence, m.payload)))
    }

    /// The live value under `key`.
    pub(crate) async fn entry(
        &self,
        op: &'static str,
        key: &str,
    ) -> Result<Option<Value>, StoreError> {
        Ok(match self.last(op, key).await? {
            Some((false, revision, value)) => Some(Value { value, revision }),
            _ => None,
        })
    }

    /// Writes `value` under `key` if there is no live value; false if there is.
    pub(crate) async fn create(
        &self,
        op: &'static str,
        key: &str,
        value: Vec<u8>,
    ) -> Result<bool, StoreError> {
        let value = Bytes::from(value);
        for _ in 0..crate::MAX_RACES {
            let expect = match self.last(op, key).await? {
                Some((false, _, _)) => return Ok(false),
                Some((true, revision, _)) => revision,
                None => 0,
            };
            let headers = async_nats::HeaderMap::new();
            if publish(
                &self.js,
                op,
                self.subject(key),
                headers,
                value.clone(),
                Some(expect),
            )
            .await?
            .is_some()
            {
                return Ok(true);
            }
        }
        Err(crate::backend(op, "too many writers raced for one record"))
    }

    /// Replaces the value at `revision`; false if the key has another revision now.
    pub(crate) async fn update(
        &self,
        op: &'static str,
        key: &str,
        value: Vec<u8>,
        revision: u64,
    ) -> Result<bool, StoreError> {
        Ok(publish(
            &self.js,
            op,
            self.subject(key),
            async_nats::HeaderMap::new(),
            Bytes::from(value),
            Some(revision),
        )
        .await?
        .is_some())
    }

    /// Deletes the value at `revision` (leaving a tombstone); false if the key has another
    /// revision now.
    pub(crate) async fn delete(
        &self,
        op: &'static str,
        key: &str,
        revision: u64,
    ) -> Result<bool, StoreError> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(H_DELETED, "1");
        Ok(publish(
            &self.js,
            op,
            self.subject(key),
            headers,
            Bytes::new(),
            Some(revision),
        )
        .await?
        .is_some())
    }

    /// Every key with a live value.
    pub(crate) async fn keys(&self, op: &'static str) -> Result<Vec<String>, StoreError> {
        let mut keys = Vec::new();
        let prefix = format!("{}.", self.prefix);
        scan(
            op,
            &self.stream,
            format!("{}.*", self.prefix),
            |_, subject, headers| {
                if headers.get(H_DELETED).is_none()
                    && let Some(key) = subject.strip_prefix(&prefix)
                {
                    keys.push(key.to_owned());
                }
                Ok(())
            },
        )
        .await?;
        Ok(keys)
    }
}
