//! Cluster mode: which of JetStream's messages hold only scavenged events.
//! The writer records, for every log message it applies, the stream and
//! first revision of an append (`log_message_key`) and the sequence of a
//! removal (`log_removal_key`); from those and the stream index this module
//! plans the per-subject purges.

use std::collections::BTreeSet;

use super::{keys, StorageError, Store};
use crate::model::StreamName;

/// One stream's messages JetStream may delete: those on its subject below
/// `before`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purge {
    pub stream: StreamName,
    pub before: u64,
}

impl Store {
    /// The purges for the removals applied at log sequences after `from` up
    /// to `to`: for each stream they removed from, its messages below the one
    /// holding its first remaining event, below its last message (JetStream
    /// keeps a subject's last sequence only while that message is there, and
    /// the compare-and-set needs it), and up to `to` (every node applied the
    /// log that far, so none still needs them).
    pub fn purge_plan(&self, from: u64, to: u64) -> Result<Vec<Purge>, StorageError> {
        let meta = self.cf(keys::CF_META);
        let mut streams = BTreeSet::new();
        let end = keys::log_removal_key(to.saturating_add(1));
        let mut it = self.db.raw_iterator_cf(meta);
        it.seek(keys::log_removal_key(from.saturating_add(1)));
        while let (Some(key), Some(value)) = (it.key(), it.value()) {
            if key >= end.as_slice() {
                break;
            }
            if let Some(stream) = std::str::from_utf8(value)
                .ok()
                .and_then(|name| StreamName::parse(name).ok())
            {
                streams.insert(stream);
            }
            it.next();
        }
        it.status()?;
        let mut plan = Vec::new();
        for stream in streams {
            let holding = match self.first_stored_revision(&stream)? {
                Some(revision) => self.log_message_holding(&stream, revision)?,
                None => u64::MAX,
            };
            let before = holding
                .min(self.subject_sequence(&stream)?)
                .min(to.saturating_add(1));
            if before > 1 {
                plan.push(Purge { stream, before });
            }
        }
        Ok(plan)
    }

    /// The lowest revision of `stream` still in the stream index.
    fn first_stored_revision(&self, stream: &StreamName) -> Result<Option<u64>, StorageError> {
        let prefix = keys::stream_index_prefix(stream.as_str());
        let mut it = self.db.raw_iterator_cf(self.cf(keys::CF_STREAM_INDEX));
        it.seek(&prefix);
        let found = it
            .key()
            .filter(|k| k.starts_with(&prefix))
            .and_then(keys::decode_stream_index_revision);
        it.status()?;
        Ok(found)
    }

    /// The log sequence of the message that appended `stream`'s `revision`;
    /// 0 when unknown (nothing may be purged then).
    fn log_message_holding(&self, stream: &StreamName, revision: u64) -> Result<u64, StorageError> {
        let prefix = keys::log_message_prefix(stream.as_str());
        let mut it = self.db.raw_iterator_cf(self.cf(keys::CF_META));
        it.seek_for_prev(keys::log_message_key(stream.as_str(), revision));
        let found = match (it.key(), it.value()) {
            (Some(key), Some(value)) if key.starts_with(&prefix) => keys::decode_position(value),
            _ => None,
        };
        it.status()?;
        Ok(found.unwrap_or(0))
    }
}
