//! The stream index's runs, and the cursor every reader of the index walks
//! them with.
//!
//! An append's events take consecutive revisions of one stream at consecutive
//! global positions, so the index keeps one entry per append: a run,
//! `(stream, first revision) -> (first position, count)`. A batch of 100
//! events costs one index entry instead of 100 (one memtable insert, its WAL
//! bytes and its share of flushes and compactions: docs/benchmarks.md, "Issue
//! 11, eleventh pass"). Runs of one stream never overlap; a scavenge that
//! removes events from a run rewrites it as the runs of what is left (the
//! writer). A reader finds the run holding a revision with one backward seek.

use rocksdb::{DBRawIteratorWithThreadMode, DB};

use super::{keys, StorageError};

/// A raw iterator over `CF_STREAM_INDEX`, of the store or of a snapshot.
pub(crate) type IndexIter<'a> = DBRawIteratorWithThreadMode<'a, DB>;

/// One index entry: revisions `first_revision..first_revision + count` of a
/// stream, at positions `position..position + count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Run {
    pub first_revision: u64,
    pub position: u64,
    /// At least one.
    pub count: u64,
}

impl Run {
    pub fn last_revision(&self) -> u64 {
        self.first_revision + (self.count - 1)
    }

    pub fn covers(&self, revision: u64) -> bool {
        (self.first_revision..=self.last_revision()).contains(&revision)
    }

    /// Where `revision` is, when this run holds it.
    pub fn position_of(&self, revision: u64) -> Option<u64> {
        self.covers(revision)
            .then(|| self.position + (revision - self.first_revision))
    }

    /// The runs left of this one once `revision` (which it holds) is taken
    /// out: the part before it and the part after it, each when not empty.
    pub fn without(&self, revision: u64) -> (Option<Run>, Option<Run>) {
        debug_assert!(self.covers(revision));
        let before = (revision > self.first_revision).then(|| Run {
            count: revision - self.first_revision,
            ..*self
        });
        let after = (revision < self.last_revision()).then(|| Run {
            first_revision: revision + 1,
            position: self.position + (revision + 1 - self.first_revision),
            count: self.last_revision() - revision,
        });
        (before, after)
    }
}

/// The run under `it` when the entry there is one of `stream`'s (its keys
/// start with `prefix`); an error when that entry does not decode.
fn run_under(it: &IndexIter<'_>, stream: &str, prefix: &[u8]) -> Result<Option<Run>, StorageError> {
    let Some((key, value)) = it.item() else {
        return Ok(None);
    };
    if !key.starts_with(prefix) {
        return Ok(None);
    }
    let decoded =
        keys::decode_stream_index_revision(key).zip(keys::decode_stream_index_value(value));
    match decoded {
        Some((first_revision, (position, count))) => Ok(Some(Run {
            first_revision,
            position,
            count,
        })),
        None => Err(StorageError::CorruptIndex(format!(
            "stream index entry of {stream} is malformed: key {key:?}, value {value:?}"
        ))),
    }
}

/// `stream`'s run with the greatest first revision at or below `revision`
/// (which holds `revision` only if it reaches that far).
pub(crate) fn run_at_or_before(
    it: &mut IndexIter<'_>,
    stream: &str,
    revision: u64,
) -> Result<Option<Run>, StorageError> {
    let prefix = keys::stream_index_prefix(stream);
    it.seek_for_prev(keys::stream_index_key(stream, revision));
    let run = run_under(it, stream, &prefix)?;
    it.status()?;
    Ok(run)
}

/// The run of `stream` holding `revision`, if the index has one.
pub(crate) fn run_holding(
    it: &mut IndexIter<'_>,
    stream: &str,
    revision: u64,
) -> Result<Option<Run>, StorageError> {
    Ok(run_at_or_before(it, stream, revision)?.filter(|run| run.covers(revision)))
}

/// Walks one stream's indexed revisions in order, one `(revision, position)`
/// at a time, across its runs.
pub(crate) struct Cursor<'a> {
    it: IndexIter<'a>,
    stream: String,
    prefix: Vec<u8>,
    forward: bool,
    /// The run under the cursor and the revision in it; `None` past the end.
    at: Option<(Run, u64)>,
}

impl<'a> Cursor<'a> {
    /// From the first indexed revision at or after `from`, upwards.
    pub fn forward(mut it: IndexIter<'a>, stream: &str, from: u64) -> Result<Self, StorageError> {
        let prefix = keys::stream_index_prefix(stream);
        let at = match run_at_or_before(&mut it, stream, from)? {
            Some(run) if run.covers(from) => Some((run, from)),
            _ => {
                // The entry after the one at or before `from` is the first
                // after it (one that starts at `from` would hold it); with
                // none at or before, seek.
                if it.valid() {
                    it.next();
                } else {
                    it.seek(keys::stream_index_key(stream, from));
                }
                run_under(&it, stream, &prefix)?.map(|run| (run, run.first_revision))
            }
        };
        it.status()?;
        Ok(Self {
            it,
            stream: stream.to_owned(),
            prefix,
            forward: true,
            at,
        })
    }

    /// From the last indexed revision at or before `from`, downwards.
    pub fn backward(mut it: IndexIter<'a>, stream: &str, from: u64) -> Result<Self, StorageError> {
        let at = run_at_or_before(&mut it, stream, from)?
            .map(|run| (run, from.min(run.last_revision())));
        Ok(Self {
            it,
            stream: stream.to_owned(),
            prefix: keys::stream_index_prefix(stream),
            forward: false,
            at,
        })
    }

    /// The revision under the cursor and its position; `None` past the end.
    pub fn current(&self) -> Option<(u64, u64)> {
        let (run, revision) = self.at?;
        Some((revision, run.position + (revision - run.first_revision)))
    }

    /// Moves to the next revision in the cursor's direction.
    pub fn advance(&mut self) -> Result<(), StorageError> {
        let Some((run, revision)) = self.at else {
            return Ok(());
        };
        self.at = if self.forward && revision < run.last_revision() {
            Some((run, revision + 1))
        } else if !self.forward && revision > run.first_revision {
            Some((run, revision - 1))
        } else {
            if self.forward {
                self.it.next();
            } else {
                self.it.prev();
            }
            let next = run_under(&self.it, &self.stream, &self.prefix)?;
            self.it.status()?;
            next.map(|run| {
                let start = if self.forward {
                    run.first_revision
                } else {
                    run.last_revision()
                };
                (run, start)
            })
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Store;
    use proptest::prelude::*;

    fn put_runs(store: &Store, stream: &str, runs: &[Run]) {
        let cf = store.cf(keys::CF_STREAM_INDEX);
        for run in runs {
            store
                .db
                .put_cf(
                    cf,
                    keys::stream_index_key(stream, run.first_revision),
                    keys::stream_index_value(run.position, run.count),
                )
                .expect("put");
        }
    }

    fn walk(store: &Store, stream: &str, from: u64, forward: bool) -> Vec<(u64, u64)> {
        let it = store.db.raw_iterator_cf(store.cf(keys::CF_STREAM_INDEX));
        let mut cursor = if forward {
            Cursor::forward(it, stream, from)
        } else {
            Cursor::backward(it, stream, from)
        }
        .expect("cursor");
        let mut out = Vec::new();
        while let Some(item) = cursor.current() {
            out.push(item);
            cursor.advance().expect("advance");
        }
        out
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config(64))]
        /// Runs with gaps between them (removed revisions), alone or between
        /// the runs of a stream before and one after: the cursor yields exactly the
        /// indexed revisions of its stream, from any start, both ways, and
        /// `run_holding` finds each one's run.
        #[test]
        fn the_cursor_walks_exactly_the_indexed_revisions(
            shape in proptest::collection::vec((0u64..4, 1u64..5), 1..8),
            from in 0u64..40,
            neighbours: bool,
        ) {
            let dir = tempfile::tempdir().expect("temp dir");
            let store = Store::open(dir.path()).expect("open");
            let (mut runs, mut revision, mut position) = (Vec::new(), 0, 1000);
            let mut indexed = Vec::new();
            for (gap, count) in shape {
                revision += gap;
                position += gap + 3;
                runs.push(Run { first_revision: revision, position, count });
                for i in 0..count {
                    indexed.push((revision + i, position + i));
                }
                revision += count;
                position += count;
            }
            put_runs(&store, "s", &runs);
            if neighbours {
                put_runs(&store, "r", &[Run { first_revision: 0, position: 1, count: 50 }]);
                put_runs(&store, "t", &[Run { first_revision: 0, position: 2, count: 50 }]);
            }
            let forward: Vec<_> = indexed.iter().copied().filter(|(r, _)| *r >= from).collect();
            prop_assert_eq!(walk(&store, "s", from, true), forward);
            let backward: Vec<_> = indexed.iter().rev().copied().filter(|(r, _)| *r <= from).collect();
            prop_assert_eq!(walk(&store, "s", from, false), backward);
            let mut it = store.db.raw_iterator_cf(store.cf(keys::CF_STREAM_INDEX));
            for r in 0..40 {
                let want = indexed.iter().find(|(ir, _)| *ir == r).map(|(_, p)| *p);
                let got = run_holding(&mut it, "s", r).expect("lookup").and_then(|run| run.position_of(r));
                prop_assert_eq!(got, want, "revision {}", r);
            }
        }

        #[test]
        fn a_run_without_one_revision_is_the_runs_around_it(
            first in 0u64..100, position in 0u64..100, count in 1u64..20, pick in 0u64..20,
        ) {
            let run = Run { first_revision: first, position, count };
            let revision = first + pick % count;
            let (before, after) = run.without(revision);
            let mut left: Vec<_> = before.iter().chain(after.iter())
                .flat_map(|r| (r.first_revision..=r.last_revision()).map(|v| (v, r.position_of(v))))
                .collect();
            left.sort_unstable();
            let want: Vec<_> = (first..first + count)
                .filter(|v| *v != revision)
                .map(|v| (v, run.position_of(v)))
                .collect();
            prop_assert_eq!(left, want);
        }
    }

    #[test]
    fn a_malformed_entry_is_a_corrupt_index() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("open");
        store
            .db
            .put_cf(
                store.cf(keys::CF_STREAM_INDEX),
                keys::stream_index_key("s", 0),
                [1, 2, 3],
            )
            .expect("put");
        let it = store.db.raw_iterator_cf(store.cf(keys::CF_STREAM_INDEX));
        assert!(matches!(
            Cursor::forward(it, "s", 0),
            Err(StorageError::CorruptIndex(_))
        ));
    }
}
