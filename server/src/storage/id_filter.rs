//! The event-id filter: one in-memory Bloom filter over every id in the
//! `event_ids` column family, so that an append's lookup of its ids (nearly
//! all absent: clients choose new ids) asks RocksDB only for the few the
//! filter cannot rule out.
//!
//! RocksDB has a filter per file, but `event_ids`' files are sorted runs of
//! random ids that each overlap all the others, so a `MultiGet` of an absent
//! id probes every level 0 file's filter, and its per-key, per-file work
//! (lookup keys, file picking, counters) cost more than the probes: a third
//! of the tokio workers' CPU under batched appends (docs/benchmarks.md,
//! "Issue 11, twelfth pass"). One probe of one cache line here answers the
//! same question.
//!
//! What it owns: the filter's memory and the rule that makes it safe, *every
//! id in `event_ids` is in the filter once it is ready*. Ids enter it only
//! through the id indexer thread, the only code that adds to `event_ids`:
//! each run's ids are inserted before the run is ingested (so before the
//! writer drops them from memory), and the ids already stored when the
//! server starts are read in by a scan of `event_ids` on the same thread,
//! in chunks between runs; the filter answers lookups only once that scan
//! is done. Until then (and with a budget of 0) every lookup goes to
//! RocksDB as if there were no filter. Removals (scavenges) leave their bits:
//! a removed id costs a RocksDB lookup, never a wrong answer.
//!
//! Bounded: the filter grows by segments, each as large as all before it
//! (16 bits per id of capacity: about 2 to 4 bytes per stored id), up to
//! `--id-filter-mib`; past that its last segment takes more ids than it was
//! sized for, and more lookups get past it (to RocksDB, whose own filters
//! still answer them). The next start sizes one segment for all the ids.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;

use uuid::Uuid;

/// Bits of filter per id of a segment's capacity: at this load one lookup
/// of an absent id in about 1,000 gets past a full segment.
const BITS_PER_ID: u64 = 16;
/// Ids per 512-bit block at capacity.
const IDS_PER_BLOCK: u64 = 512 / BITS_PER_ID;
/// The smallest segment, in ids (2 MiB of filter).
const MIN_SEGMENT_IDS: u64 = 1 << 20;
/// Segments at most; each is as large as all before it, so this is never
/// reached below an exabyte.
const MAX_SEGMENTS: usize = 32;
/// The default budget, in MiB (`--id-filter-mib`).
pub const DEFAULT_FILTER_MIB: usize = 256;

/// One cache line: eight words, each id sets one bit in each.
#[repr(align(64))]
#[derive(Default)]
struct Block([AtomicU64; 8]);

/// The split-block filter's salts (as in Parquet's and Impala's): the
/// id's low hash bits times each picks its bit in one word.
const SALTS: [u32; 8] = [
    0x47b6_137b,
    0x4497_4d91,
    0x8824_ad5b,
    0xa2b7_289d,
    0x7054_95c7,
    0x2df1_424b,
    0x9efc_4947,
    0x5c6b_fb31,
];

struct Segment {
    blocks: Box<[Block]>,
    /// Ids it was sized for.
    capacity: u64,
    /// Ids inserted (counted once per insert, removed or not).
    inserted: AtomicU64,
}

impl Segment {
    fn new(capacity: u64) -> Self {
        let blocks = capacity.div_ceil(IDS_PER_BLOCK).max(1);
        Self {
            blocks: (0..blocks).map(|_| Block::default()).collect(),
            capacity,
            inserted: AtomicU64::new(0),
        }
    }

    fn block(&self, hash: u64) -> &Block {
        // The high half, mapped onto the blocks by a multiply (no modulo).
        let index = ((hash >> 32) * self.blocks.len() as u64) >> 32;
        &self.blocks[index as usize]
    }

    fn bits(hash: u64) -> impl Iterator<Item = u64> {
        SALTS
            .into_iter()
            .map(move |salt| 1u64 << ((hash as u32).wrapping_mul(salt) >> 26))
    }

    fn insert(&self, hash: u64) {
        let block = self.block(hash);
        for (word, bit) in block.0.iter().zip(Self::bits(hash)) {
            word.fetch_or(bit, Ordering::Relaxed);
        }
        self.inserted.fetch_add(1, Ordering::Relaxed);
    }

    /// The first word of `hash`'s block: a load that brings the block into
    /// the cache.
    fn first_word(&self, hash: u64) -> u64 {
        self.block(hash).0[0].load(Ordering::Relaxed)
    }

    fn may_contain(&self, hash: u64) -> bool {
        let block = self.block(hash);
        block
            .0
            .iter()
            .zip(Self::bits(hash))
            .all(|(word, bit)| word.load(Ordering::Relaxed) & bit != 0)
    }

    fn bytes(&self) -> usize {
        std::mem::size_of_val(&*self.blocks)
    }
}

/// What `/metrics` reports of the filter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IdFilterStats {
    /// Whether lookups use it (the start-up scan is done).
    pub ready: bool,
    /// Ids inserted, removed ones included.
    pub ids: u64,
    /// Its memory.
    pub bytes: u64,
    /// Ids looked up in `event_ids` because the filter could not rule them
    /// out or was not ready, since the start.
    pub passed: u64,
}

/// See the module documentation.
pub(super) struct IdFilter {
    /// Keyed at random per process: clients choose the ids, so they cannot
    /// choose ones that crowd one block.
    hasher: std::collections::hash_map::RandomState,
    budget_bytes: u64,
    /// The smallest segment worth adding, in ids.
    min_segment_ids: u64,
    /// Filled in order by the indexer thread; lookups probe every set one.
    segments: [OnceLock<Segment>; MAX_SEGMENTS],
    /// Segments set (the indexer thread's count, read by the metrics).
    count: AtomicUsize,
    ready: AtomicBool,
    passed: AtomicU64,
}

impl IdFilter {
    /// An empty, not ready filter of at most `budget_bytes` (0: off).
    pub(super) fn new(budget_bytes: u64) -> Self {
        Self::with_min_segment(budget_bytes, MIN_SEGMENT_IDS)
    }

    fn with_min_segment(budget_bytes: u64, min_segment_ids: u64) -> Self {
        Self {
            hasher: std::collections::hash_map::RandomState::new(),
            budget_bytes,
            min_segment_ids,
            segments: std::array::from_fn(|_| OnceLock::new()),
            count: AtomicUsize::new(0),
            ready: AtomicBool::new(false),
            passed: AtomicU64::new(0),
        }
    }

    fn hash(&self, id: &Uuid) -> u64 {
        self.hasher.hash_one(id.as_u128())
    }

    fn set(&self) -> impl Iterator<Item = &Segment> {
        self.segments.iter().map_while(OnceLock::get)
    }

    /// Indexer thread: makes room for `expected` ids before the start-up
    /// scan (the first segment is sized for twice as many, within the
    /// budget). Whether the filter is on.
    pub(super) fn start(&self, expected: u64) -> bool {
        if self.count.load(Ordering::Relaxed) == 0 {
            self.add_segment(expected.saturating_mul(2));
        }
        self.count.load(Ordering::Relaxed) > 0
    }

    /// Indexer thread: the scan is done; lookups may use the filter.
    pub(super) fn set_ready(&self) {
        if self.count.load(Ordering::Relaxed) > 0 {
            self.ready.store(true, Ordering::Release);
        }
    }

    /// Adds a segment for `wanted` ids (at least the smallest), or for what
    /// is left of the budget; none if that is less than the smallest.
    fn add_segment(&self, wanted: u64) {
        let count = self.count.load(Ordering::Relaxed);
        if count == MAX_SEGMENTS {
            return;
        }
        let used: u64 = self.set().map(|s| s.bytes() as u64).sum();
        let affordable = self.budget_bytes.saturating_sub(used) * 8 / BITS_PER_ID;
        let capacity = wanted.max(self.min_segment_ids).min(affordable);
        // Whole blocks, so that the segment's bytes stay within the budget.
        let capacity = capacity - capacity % IDS_PER_BLOCK;
        if capacity < self.min_segment_ids || capacity == 0 {
            return;
        }
        if self.segments[count].set(Segment::new(capacity)).is_ok() {
            self.count.store(count + 1, Ordering::Relaxed);
        }
    }

    /// Indexer thread (the only caller): adds `ids`, growing the filter
    /// first when its newest segment is full. Called before the ids are
    /// in `event_ids`.
    pub(super) fn insert(&self, ids: impl Iterator<Item = Uuid>) {
        for id in ids {
            self.insert_hash(self.hash(&id));
        }
    }

    /// Indexer thread: [`Self::insert`] for an id as `event_ids` keys it.
    pub(super) fn insert_key(&self, key: u128) {
        self.insert_hash(self.hasher.hash_one(key));
    }

    fn insert_hash(&self, hash: u64) {
        let Some(mut last) = self.set().last() else {
            return;
        };
        if last.inserted.load(Ordering::Relaxed) >= last.capacity {
            let total: u64 = self.set().map(|s| s.capacity).sum();
            self.add_segment(total);
            last = self.set().last().unwrap_or(last);
        }
        last.insert(hash);
    }

    /// Keeps in `ids` those that may be in `event_ids`: all of them while the
    /// filter is not ready.
    pub(super) fn retain_possible(&self, ids: &mut Vec<Uuid>) {
        if self.ready.load(Ordering::Acquire) {
            // Each probe is a cache miss (one per segment), and the misses
            // of different ids do not depend on each other: every block is
            // loaded first, with nothing branching on what it holds, so the
            // misses overlap instead of coming one after another; the checks
            // then find their blocks cached.
            let hashes: Vec<u64> = ids.iter().map(|id| self.hash(id)).collect();
            let touched = hashes.iter().fold(0, |acc, &hash| {
                self.set()
                    .fold(acc, |acc, segment| acc ^ segment.first_word(hash))
            });
            std::hint::black_box(touched);
            let mut hashes = hashes.into_iter();
            ids.retain(|_| {
                hashes
                    .next()
                    .is_none_or(|hash| self.set().any(|segment| segment.may_contain(hash)))
            });
        }
        self.passed.fetch_add(ids.len() as u64, Ordering::Relaxed);
    }

    pub(super) fn stats(&self) -> IdFilterStats {
        IdFilterStats {
            ready: self.ready.load(Ordering::Acquire),
            ids: self.set().map(|s| s.inserted.load(Ordering::Relaxed)).sum(),
            bytes: self.set().map(|s| s.bytes() as u64).sum(),
            passed: self.passed.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A ready filter whose segments are at least `min_segment` ids.
    fn ready(budget: u64, min_segment: u64, expected: u64) -> IdFilter {
        let filter = IdFilter::with_min_segment(budget, min_segment);
        filter.start(expected);
        filter.set_ready();
        filter
    }

    fn possible(filter: &IdFilter, ids: &[Uuid]) -> Vec<Uuid> {
        let mut ids = ids.to_vec();
        filter.retain_possible(&mut ids);
        ids
    }

    fn random_ids(n: u64) -> Vec<Uuid> {
        (0..n).map(|_| Uuid::new_v4()).collect()
    }

    #[test]
    fn a_filter_rules_ids_out_only_once_ready() {
        let filter = IdFilter::new(64 << 20);
        assert!(filter.start(0));
        let ids = random_ids(100);
        assert_eq!(possible(&filter, &ids), ids, "not ready");
        assert_eq!(filter.stats().passed, 100);
        filter.set_ready();
        let passed = possible(&filter, &ids).len();
        assert!(passed < 5, "nothing was inserted, yet {passed} got past");
        assert_eq!(filter.stats().passed, 100 + passed as u64);
        assert!(filter.stats().ready);
    }

    #[test]
    fn a_budget_of_zero_turns_it_off() {
        let filter = IdFilter::new(0);
        assert!(!filter.start(10));
        filter.set_ready();
        filter.insert(random_ids(1).into_iter());
        let stats = filter.stats();
        assert!(!stats.ready);
        assert_eq!((stats.ids, stats.bytes), (0, 0));
        assert_eq!(possible(&filter, &random_ids(1)).len(), 1);
    }

    #[test]
    fn the_first_segment_holds_twice_the_ids_expected() {
        let filter = ready(64 << 20, 1024, 100_000);
        assert_eq!(filter.stats().bytes, 200_000 * BITS_PER_ID / 8);
        let small = ready(64 << 20, 1024, 10);
        assert_eq!(
            small.stats().bytes,
            1024 * BITS_PER_ID / 8,
            "the smallest segment"
        );
    }

    #[test]
    fn one_absent_id_in_about_a_thousand_gets_past_a_full_segment() {
        let capacity = 1 << 16;
        let filter = ready(64 << 20, capacity, 0);
        filter.insert(random_ids(capacity).into_iter());
        let stats = filter.stats();
        assert_eq!(stats.ids, capacity);
        assert_eq!(stats.bytes, capacity * BITS_PER_ID / 8, "one segment");
        let passed = possible(&filter, &random_ids(200_000)).len();
        // 16 bits per id in 512-bit blocks: about 0.1%.
        assert!(passed < 600, "{passed} of 200,000 absent ids got past");
    }

    #[test]
    fn it_grows_by_segments_within_its_budget_and_then_overfills() {
        let min = 1024;
        // Room for segments of 1,024 + 1,024 + 2,048 ids, and not for 4,096 more.
        let budget = 4096 * BITS_PER_ID / 8 + 100;
        let filter = ready(budget, min, 0);
        let ids = random_ids(10_000);
        for (n, id) in ids.iter().enumerate() {
            filter.insert(std::iter::once(*id));
            let segments = filter.count.load(Ordering::Relaxed);
            let want = match n {
                0..1024 => 1,
                1024..2048 => 2,
                _ => 3,
            };
            assert_eq!(segments, want, "after {} ids", n + 1);
        }
        let stats = filter.stats();
        assert_eq!(stats.ids, 10_000);
        assert_eq!(stats.bytes, 4096 * BITS_PER_ID / 8);
        assert_eq!(possible(&filter, &ids), ids, "no inserted id is ruled out");
        // Overfilled 2.4 times: more get past, and still not most.
        let passed = possible(&filter, &random_ids(10_000)).len();
        assert!(
            (100..5_000).contains(&passed),
            "{passed} of 10,000 got past"
        );
    }

    #[test]
    fn each_id_is_judged_by_its_own_probe_in_a_mixed_batch() {
        // Three segments: every id is probed in each.
        let filter = ready(64 << 20, 1 << 10, 0);
        let inserted = random_ids(3_000);
        filter.insert(inserted.iter().copied());
        assert_eq!(filter.count.load(Ordering::Relaxed), 3);
        let absent = random_ids(3_000);
        let mixed: Vec<Uuid> = inserted
            .iter()
            .zip(&absent)
            .flat_map(|(a, b)| [*a, *b])
            .collect();
        let kept = possible(&filter, &mixed);
        let kept_inserted: Vec<Uuid> = kept
            .iter()
            .copied()
            .filter(|id| inserted.contains(id))
            .collect();
        assert_eq!(kept_inserted, inserted, "an inserted id was ruled out");
        let passed = kept.len() - inserted.len();
        assert!(passed < 60, "{passed} of 3,000 absent ids got past");
    }

    proptest! {
        /// Whatever the sizes and the order, an inserted id is never ruled
        /// out, and an id `event_ids` keys (`insert_key`) is the same id.
        #[test]
        fn an_inserted_id_is_never_ruled_out(
            budget in 0u64..20_000,
            expected in 0u64..3_000,
            seeds in proptest::collection::vec(any::<u128>(), 1..3_000),
            by_key in any::<bool>(),
        ) {
            let filter = ready(budget, 64, expected);
            let ids: Vec<Uuid> = seeds.iter().map(|s| Uuid::from_u128(*s)).collect();
            if by_key {
                for id in &ids {
                    filter.insert_key(u128::from_be_bytes(*id.as_bytes()));
                }
            } else {
                filter.insert(ids.iter().copied());
            }
            prop_assert!(filter.stats().bytes <= budget);
            prop_assert_eq!(possible(&filter, &ids), ids);
        }
    }
}
