//! Reads of single entries, always answered by the stream's leader.
//!
//! JetStream's "direct get" (`allow_direct`) is answered by any replica, a follower that has
//! not applied the latest writes included. A reader could then miss a message its writer was
//! just told is stored (and wait for the next wake-up to see it), or see one an ack just
//! deleted, and two nodes taking the same messages could both count them (the cluster test
//! caught that one). The store's promises need to read what was written, so every read goes
//! through `STREAM.MSG.GET`, which the leader answers from its store — and the leader answers
//! a write only once it has applied it.

use crate::backend;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{self, RawMessageError, RawMessageErrorKind};
use pigeon_store::StoreError;

fn found(
    op: &'static str,
    got: Result<StreamMessage, RawMessageError>,
) -> Result<Option<StreamMessage>, StoreError> {
    match got {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(backend(op, e)),
    }
}

/// The newest entry on `subject`.
pub(crate) async fn last(
    op: &'static str,
    stream: &stream::Stream,
    subject: &str,
) -> Result<Option<StreamMessage>, StoreError> {
    found(op, stream.get_last_raw_message_by_subject(subject).await)
}

/// The first entry on `subject` at or after stream sequence `from`.
pub(crate) async fn next(
    op: &'static str,
    stream: &stream::Stream,
    subject: &str,
    from: u64,
) -> Result<Option<StreamMessage>, StoreError> {
    found(
        op,
        stream.get_first_raw_message_by_subject(subject, from).await,
    )
}

/// The entry at stream sequence `sequence`.
pub(crate) async fn at(
    op: &'static str,
    stream: &stream::Stream,
    sequence: u64,
) -> Result<Option<StreamMessage>, StoreError> {
    found(op, stream.get_raw_message(sequence).await)
}
