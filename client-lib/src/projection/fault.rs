//! The points between a batch's steps where a runner can be made to fail on
//! purpose (with the `fault-injection` feature, which only tests enable), to
//! show that a crash at any of them loses nothing.

/// A point in the handling of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// `apply` returned; nothing emitted yet.
    AfterApply,
    /// One emitted append succeeded (others of the batch may follow).
    AfterOneEmitted,
    /// Every emitted event is stored; `commit` not called yet.
    AfterEmit,
    /// `commit` returned; the checkpoint store not saved yet.
    AfterCommit,
}
