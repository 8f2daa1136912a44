//! Reads of single entries that see every write answered before them.
//!
//! JetStream's "direct get" (`allow_direct`) is answered by any replica of a stream, a follower
//! that has not applied the latest writes included. A reader could then miss a message its
//! writer was just told is stored (and wait for the next wake-up to see it), or see one an ack
//! just deleted, and two nodes taking the same messages could both count them (the cluster
//! test caught that one). So on a replicated stream every read goes through `STREAM.MSG.GET`,
//! which the leader answers from its store — and the leader answers a write only once it has
//! applied it. A stream with one replica has no follower to be behind, and keeps the cheaper
//! direct get (with Debian's nats-server on one machine, `pigeon bench relay --store-nats`
//! went from ~5.7k to ~3.8k msg/s when it, too, read through the leader's API).

use crate::backend;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{self, DirectGetErrorKind, RawMessageErrorKind};
use pigeon_store::StoreError;

/// Whether reads of `stream` must go to its leader.
fn replicated(stream: &stream::Stream) -> bool {
    stream.cached_info().config.num_replicas > 1
}

fn from_leader(
    op: &'static str,
    got: Result<StreamMessage, stream::RawMessageError>,
) -> Result<Option<StreamMessage>, StoreError> {
    match got {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(backend(op, e)),
    }
}

fn direct(
    op: &'static str,
    got: Result<StreamMessage, stream::DirectGetError>,
) -> Result<Option<StreamMessage>, StoreError> {
    match got {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
        Err(e) => Err(backend(op, e)),
    }
}

/// The newest entry on `subject`.
pub(crate) async fn last(
    op: &'static str,
    stream: &stream::Stream,
    subject: &str,
) -> Result<Option<StreamMessage>, StoreError> {
    if replicated(stream) {
        from_leader(op, stream.get_last_raw_message_by_subject(subject).await)
    } else {
        direct(op, stream.direct_get_last_for_subject(subject).await)
    }
}

/// The first entry on `subject` at or after stream sequence `from`.
pub(crate) async fn next(
    op: &'static str,
    stream: &stream::Stream,
    subject: &str,
    from: u64,
) -> Result<Option<StreamMessage>, StoreError> {
    if replicated(stream) {
        from_leader(
            op,
            stream.get_first_raw_message_by_subject(subject, from).await,
        )
    } else {
        direct(
            op,
            stream
                .direct_get_next_for_subject(subject, Some(from))
                .await,
        )
    }
}

/// The entry at stream sequence `sequence`.
pub(crate) async fn at(
    op: &'static str,
    stream: &stream::Stream,
    sequence: u64,
) -> Result<Option<StreamMessage>, StoreError> {
    if replicated(stream) {
        from_leader(op, stream.get_raw_message(sequence).await)
    } else {
        direct(op, stream.direct_get(sequence).await)
    }
}
