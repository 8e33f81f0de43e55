//! How the writer waits for its next request once a group is answered: a
//! short spin on its queue before it sleeps, when spinning pays.
//!
//! A client that appends one request at a time waits for each answer, so its
//! next request reaches the writer about one loopback round trip after the
//! last group (150-250 µs on the project's machines). A writer asleep by then
//! has to be woken (a futex wake and, on a virtual machine, the halt exit of
//! an idle vCPU), tens of microseconds on the path of every such append
//! (docs/benchmarks.md, "Issue 11, eighteenth pass"). So the writer spins on
//! its queue for up to the budget (`--writer-spin-us`), but only when both
//! hold:
//!
//! - most of its last eight waits ended within the budget: requests come
//!   back to back. A client appending every few milliseconds never makes it
//!   spin, nor does an idle server;
//! - the group just answered was one request, and no other append is in
//!   progress: with other appends being received or parsed, or their
//!   clients about to send them, a spinning writer would take a CPU from
//!   them (32 concurrent writers on two CPUs seldom make it spin).
//!
//! RocksDB's own write thread does the same (`enable_write_thread_adaptive_yield`).
//! Bounded: one budget per group at most, counted by
//! `skald_writer_spins_total{outcome}`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc::{self, error::TryRecvError};

/// How many queue checks between two reads of the clock while spinning.
const CHECKS_PER_CLOCK: u32 = 64;
/// Of the last eight waits, how many must have ended within the budget.
const BACK_TO_BACK: u32 = 5;

/// Appends in progress (received, not yet answered), shared by the front
/// ends that take them and the writer that reads it.
#[derive(Clone, Debug, Default)]
pub struct AppendsInProgress(Arc<AtomicUsize>);

impl AppendsInProgress {
    /// Counts one append until the guard is dropped.
    pub fn start(&self) -> AppendGuard<'_> {
        self.0.fetch_add(1, Ordering::Relaxed);
        AppendGuard(&self.0)
    }

    fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// One append in progress (see [`AppendsInProgress::start`]); a borrow, so
/// that counting an append is one atomic add and one subtract.
#[derive(Debug)]
pub struct AppendGuard<'a>(&'a AtomicUsize);

impl Drop for AppendGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the spins did: exported as `skald_writer_spins_total{outcome}`.
#[derive(Clone, Debug, Default)]
pub struct SpinCounters {
    /// Spins that found a request within the budget.
    pub caught: Counter,
    /// Spins that ran the whole budget and went to sleep.
    pub missed: Counter,
}

/// The writer's way of waiting on its queue (see the module docs).
pub struct IdleWait {
    budget: Duration,
    /// The last eight waits, the newest in the lowest bit: 1 when a request
    /// came within the budget.
    recent: u8,
    appends: AppendsInProgress,
    counters: SpinCounters,
}

impl IdleWait {
    /// Spins for at most `budget` (zero: never).
    pub fn new(budget: Duration, appends: AppendsInProgress, counters: SpinCounters) -> Self {
        Self {
            budget,
            recent: 0,
            appends,
            counters,
        }
    }

    /// The next request, `None` once the queue is closed and empty.
    /// `answered`: how many requests the last group answered (their appends
    /// may still be in progress, sending their answers).
    pub fn next<T>(
        &mut self,
        queue: &mut mpsc::UnboundedReceiver<T>,
        answered: usize,
    ) -> Option<T> {
        let started = Instant::now();
        if self.should_spin(answered) {
            loop {
                for _ in 0..CHECKS_PER_CLOCK {
                    match queue.try_recv() {
                        Ok(request) => {
                            self.counters.caught.inc();
                            self.note(true);
                            return Some(request);
                        }
                        Err(TryRecvError::Disconnected) => return None,
                        Err(TryRecvError::Empty) => std::hint::spin_loop(),
                    }
                }
                if started.elapsed() >= self.budget {
                    break;
                }
            }
            self.counters.missed.inc();
            self.note(false);
            return queue.blocking_recv();
        }
        let next = queue.blocking_recv();
        self.note(started.elapsed() <= self.budget);
        next
    }

    fn should_spin(&self, answered: usize) -> bool {
        !self.budget.is_zero()
            && answered == 1
            && self.appends.get() <= 1
            && self.recent.count_ones() >= BACK_TO_BACK
    }

    fn note(&mut self, within_budget: bool) {
        self.recent = (self.recent << 1) | u8::from(within_budget);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait(budget: Duration) -> (IdleWait, AppendsInProgress, SpinCounters) {
        let appends = AppendsInProgress::default();
        let counters = SpinCounters::default();
        let wait = IdleWait::new(budget, appends.clone(), counters.clone());
        (wait, appends, counters)
    }

    #[test]
    fn back_to_back_requests_are_caught_spinning_after_five_quick_waits() {
        let (mut wait, _appends, counters) = wait(Duration::from_secs(10));
        let (tx, mut rx) = mpsc::unbounded_channel();
        for i in 0..10 {
            tx.send(i).expect("send");
        }
        for i in 0..10 {
            assert_eq!(wait.next(&mut rx, 1), Some(i));
        }
        // The first five waits slept (too little history); the next five spun
        // and found their request at once.
        assert_eq!(counters.caught.get(), 5);
        assert_eq!(counters.missed.get(), 0);
    }

    #[test]
    fn other_appends_in_progress_keep_the_writer_from_spinning() {
        let (mut wait, appends, counters) = wait(Duration::from_secs(10));
        wait.recent = u8::MAX;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let others: Vec<AppendGuard<'_>> = (0..2).map(|_| appends.start()).collect();
        tx.send(1).expect("send");
        // Two appends in progress, one answered: the other is still being received.
        assert_eq!(wait.next(&mut rx, 1), Some(1));
        assert_eq!(counters.caught.get() + counters.missed.get(), 0);
        drop(others);
        let answered = appends.start();
        tx.send(2).expect("send");
        assert_eq!(wait.next(&mut rx, 1), Some(2));
        assert_eq!(counters.caught.get(), 1);
        drop(answered);
    }

    #[test]
    fn a_group_of_several_requests_is_no_reason_to_spin() {
        let (mut wait, _appends, counters) = wait(Duration::from_secs(10));
        wait.recent = u8::MAX;
        let (tx, mut rx) = mpsc::unbounded_channel();
        tx.send(1).expect("send");
        // Several clients at once: their next requests are being parsed.
        assert_eq!(wait.next(&mut rx, 2), Some(1));
        assert_eq!(counters.caught.get() + counters.missed.get(), 0);
        tx.send(2).expect("send");
        assert_eq!(wait.next(&mut rx, 1), Some(2));
        assert_eq!(counters.caught.get(), 1);
    }

    #[test]
    fn a_spin_that_finds_nothing_sleeps_and_counts_against_spinning() {
        let (mut wait, _appends, counters) = wait(Duration::from_millis(1));
        wait.recent = 0b1111_1000;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let missed = counters.missed.clone();
        let sender = std::thread::spawn(move || {
            // Sent only once the spin has given up.
            while missed.get() == 0 {
                std::thread::yield_now();
            }
            tx.send(7).expect("send");
        });
        assert_eq!(wait.next(&mut rx, 1), Some(7));
        sender.join().expect("sender");
        assert_eq!(counters.missed.get(), 1);
        assert_eq!(counters.caught.get(), 0);
        // Four of the last eight now: the next wait does not spin.
        assert_eq!(wait.recent, 0b1111_0000);
        assert!(!wait.should_spin(1));
    }

    #[test]
    fn a_closed_queue_ends_the_wait_spinning_or_not() {
        for recent in [0, u8::MAX] {
            let (mut wait, _appends, _counters) = wait(Duration::from_secs(10));
            wait.recent = recent;
            let (tx, mut rx) = mpsc::unbounded_channel::<u32>();
            drop(tx);
            assert_eq!(wait.next(&mut rx, 1), None);
        }
    }
}
