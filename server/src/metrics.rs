//! Counters, gauges and histograms of the server, exported in the Prometheus
//! text format at `/metrics` (prometheus-client), plus the one-minute rates that
//! `/admin/stats` reports.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::storage::writer::CommitInfo;

/// Labels of HTTP request metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route pattern (`/streams/{stream}`), never the raw path.
    pub route: String,
    pub method: String,
    pub status: u16,
}

/// Labels of the writer's spins on its queue.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SpinLabels {
    /// `caught` (a request came within the budget) or `missed`.
    pub outcome: &'static str,
}

/// Every metric of the server.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: Family<RequestLabels, Histogram, fn() -> Histogram>,
    pub appended_events: Counter,
    pub appended_bytes: Counter,
    pub read_events: Counter,
    /// Live tail reads answered from another reader's read of the same tail.
    pub shared_tail_reads: Counter,
    /// Live tail reads answered from the commit's own events, without a read.
    pub live_tails_from_memory: Counter,
    /// The writer's spins on its empty queue, by outcome.
    pub writer_spins: Family<SpinLabels, Counter>,
    pub group_requests: Histogram,
    pub group_events: Histogram,
    pub fsync_seconds: Histogram,
    pub subscriptions: Gauge,
    pub long_polls: Gauge,
    pub scavenge_running: Gauge,
    /// Connections open now.
    pub connections: Gauge,
    /// Connections answered 503 (or closed) for being over `--max-connections`.
    pub connections_rejected: Counter,
    /// Connections closed for not sending a complete request head in time.
    pub connections_timed_out: Counter,
    /// Connections closed because the client read none of a response for
    /// `--write-stall-timeout-secs`.
    pub connections_write_stalled: Counter,
    /// gRPC (KurrentDB protocol) connections open now.
    pub grpc_connections: Gauge,
    /// gRPC connections closed at once for being over `--max-connections`.
    pub grpc_connections_rejected: Counter,
    /// TLS handshakes that failed (bad client hello, unknown CA, plain HTTP).
    pub tls_handshake_failures: Counter,
    /// Failed accepts (out of file descriptors, usually).
    pub accept_errors: Counter,
    /// Write requests the storage engine failed (disk full, I/O error).
    pub write_failures: Counter,
    /// 1 while writes fail because the disk is full.
    pub disk_full: Gauge,
    /// Write requests queued for or being committed by the writer.
    pub writer_queue_requests: Gauge,
    /// KiB of payload queued for or being committed by the writer.
    pub writer_queue_kib: Gauge,
    /// Committed event ids the id index holds in memory only (not yet in
    /// `event_ids`; read back from the log after a crash).
    pub unindexed_event_ids: Gauge,
    /// 1 once the event-id filter answers lookups (its start-up scan is done).
    pub id_filter_ready: Gauge,
    /// Ids in the event-id filter (removed ones included).
    pub id_filter_ids: Gauge,
    /// Memory of the event-id filter.
    pub id_filter_bytes: Gauge,
    /// Event ids looked up in `event_ids` on disk: the filter could not rule
    /// them out, or was not ready.
    pub id_lookups_on_disk: Counter,
    /// The filter's count at the last scrape (`id_lookups_on_disk` adds the difference).
    id_lookups_on_disk_seen: std::sync::atomic::AtomicU64,
    pub scavenge_events_scanned: Gauge,
    pub scavenge_events_removed: Gauge,
    pub scavenge_bytes_reclaimed: Gauge,
    /// Requests answered 401 (no token, or an unknown one).
    pub auth_unauthorized: Counter,
    /// Requests answered 403 (a known token without the right).
    pub auth_forbidden: Counter,
    /// Auth file reloads (SIGHUP) that took effect.
    pub auth_reloads: Counter,
    /// Auth file reloads refused (the file was unreadable or invalid).
    pub auth_reload_failures: Counter,
    /// Tokens in force.
    pub auth_tokens: Gauge,
    /// Cluster mode: the last log sequence this node applied.
    pub replication_applied: Gauge,
    /// Cluster mode: log messages this node has not applied yet.
    pub replication_lag: Gauge,
    /// Cluster mode: 1 once this node stopped applying the log (a damaged
    /// message or a failed write; see the log), until a restart.
    pub replication_stopped: Gauge,
    /// Cluster mode: messages this node purged from JetStream after scavenges.
    pub replication_purged_messages: Counter,
    append_rate: RateWindow,
    read_rate: RateWindow,
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~1.6 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("skald");
        let requests = Family::<RequestLabels, Counter>::default();
        let request_seconds =
            Family::<RequestLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram as fn() -> Histogram,
            );
        let metrics = Self {
            requests: requests.clone(),
            request_seconds: request_seconds.clone(),
            appended_events: Counter::default(),
            appended_bytes: Counter::default(),
            read_events: Counter::default(),
            shared_tail_reads: Counter::default(),
            live_tails_from_memory: Counter::default(),
            writer_spins: Family::default(),
            group_requests: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            group_events: Histogram::new(exponential_buckets(1.0, 2.0, 15)),
            fsync_seconds: latency_histogram(),
            subscriptions: Gauge::default(),
            long_polls: Gauge::default(),
            scavenge_running: Gauge::default(),
            connections: Gauge::default(),
            connections_rejected: Counter::default(),
            connections_timed_out: Counter::default(),
            connections_write_stalled: Counter::default(),
            grpc_connections: Gauge::default(),
            grpc_connections_rejected: Counter::default(),
            accept_errors: Counter::default(),
            tls_handshake_failures: Counter::default(),
            write_failures: Counter::default(),
            disk_full: Gauge::default(),
            writer_queue_requests: Gauge::default(),
            writer_queue_kib: Gauge::default(),
            unindexed_event_ids: Gauge::default(),
            id_filter_ready: Gauge::default(),
            id_filter_ids: Gauge::default(),
            id_filter_bytes: Gauge::default(),
            id_lookups_on_disk: Counter::default(),
            id_lookups_on_disk_seen: std::sync::atomic::AtomicU64::new(0),
            scavenge_events_scanned: Gauge::default(),
            scavenge_events_removed: Gauge::default(),
            scavenge_bytes_reclaimed: Gauge::default(),
            auth_unauthorized: Counter::default(),
            auth_forbidden: Counter::default(),
            auth_reloads: Counter::default(),
            auth_reload_failures: Counter::default(),
            auth_tokens: Gauge::default(),
            replication_applied: Gauge::default(),
            replication_lag: Gauge::default(),
            replication_stopped: Gauge::default(),
            replication_purged_messages: Counter::default(),
            append_rate: RateWindow::default(),
            read_rate: RateWindow::default(),
            registry: Registry::default(),
        };
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            requests,
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer (to the first byte for streams)",
            request_seconds,
        );
        registry.register(
            "appended_events",
            "Events appended",
            metrics.appended_events.clone(),
        );
        registry.register(
            "appended_bytes",
            "Bytes of event records appended",
            metrics.appended_bytes.clone(),
        );
        registry.register(
            "read_events",
            "Events returned by reads and subscriptions",
            metrics.read_events.clone(),
        );
        registry.register(
            "shared_tail_reads",
            "Live tail reads answered from another reader's read of the same commit",
            metrics.shared_tail_reads.clone(),
        );
        registry.register(
            "live_tails_from_memory",
            "Live tail reads taken from the events the commit wrote, without reading the store",
            metrics.live_tails_from_memory.clone(),
        );
        registry.register(
            "writer_spins",
            "Spins of the writer on its empty queue, by outcome (caught a request, or missed and slept)",
            metrics.writer_spins.clone(),
        );
        registry.register(
            "group_commit_requests",
            "Requests per group commit",
            metrics.group_requests.clone(),
        );
        registry.register(
            "group_commit_events",
            "Events per group commit",
            metrics.group_events.clone(),
        );
        registry.register(
            "group_commit_fsync_seconds",
            "Duration of each synced group write",
            metrics.fsync_seconds.clone(),
        );
        registry.register(
            "subscriptions",
            "Live pushed subscriptions",
            metrics.subscriptions.clone(),
        );
        registry.register(
            "long_polls_waiting",
            "Long-poll reads waiting for a commit",
            metrics.long_polls.clone(),
        );
        registry.register(
            "connections",
            "HTTP connections open now",
            metrics.connections.clone(),
        );
        registry.register(
            "connections_rejected",
            "Connections refused for being over --max-connections",
            metrics.connections_rejected.clone(),
        );
        registry.register(
            "grpc_connections",
            "gRPC (KurrentDB protocol) connections open now",
            metrics.grpc_connections.clone(),
        );
        registry.register(
            "grpc_connections_rejected",
            "gRPC connections closed for being over --max-connections",
            metrics.grpc_connections_rejected.clone(),
        );
        registry.register(
            "connections_timed_out",
            "Connections closed for not sending a complete request head in time",
            metrics.connections_timed_out.clone(),
        );
        registry.register(
            "connections_write_stalled",
            "Connections closed because the client read none of a response for --write-stall-timeout-secs",
            metrics.connections_write_stalled.clone(),
        );
        registry.register(
            "accept_errors",
            "Connections the listener failed to accept (file descriptors exhausted, usually)",
            metrics.accept_errors.clone(),
        );
        registry.register(
            "write_failures",
            "Write requests the storage engine failed (disk full, I/O error)",
            metrics.write_failures.clone(),
        );
        registry.register(
            "disk_full",
            "1 while writes fail because the disk is full",
            metrics.disk_full.clone(),
        );
        registry.register(
            "replication_applied_sequence",
            "Cluster mode: the last log sequence this node applied",
            metrics.replication_applied.clone(),
        );
        registry.register(
            "replication_lag_messages",
            "Cluster mode: log messages this node has not applied yet",
            metrics.replication_lag.clone(),
        );
        registry.register(
            "replication_stopped",
            "Cluster mode: 1 once this node stopped applying the log (see its log)",
            metrics.replication_stopped.clone(),
        );
        registry.register(
            "replication_purged_messages",
            "Cluster mode: messages holding only scavenged events this node purged from JetStream",
            metrics.replication_purged_messages.clone(),
        );
        registry.register(
            "writer_queue_requests",
            "Write requests queued for or being committed by the writer",
            metrics.writer_queue_requests.clone(),
        );
        registry.register(
            "writer_queue_kib",
            "KiB of payload queued for or being committed by the writer",
            metrics.writer_queue_kib.clone(),
        );
        registry.register(
            "unindexed_event_ids",
            "Committed event ids the id index holds in memory only (read back from the log after a crash)",
            metrics.unindexed_event_ids.clone(),
        );
        registry.register(
            "id_filter_ready",
            "1 once the event-id filter answers lookups (its start-up scan of event_ids is done)",
            metrics.id_filter_ready.clone(),
        );
        registry.register(
            "id_filter_ids",
            "Event ids in the event-id filter, removed ones included",
            metrics.id_filter_ids.clone(),
        );
        registry.register(
            "id_filter_bytes",
            "Memory of the event-id filter (at most --id-filter-mib)",
            metrics.id_filter_bytes.clone(),
        );
        registry.register(
            "id_lookups_on_disk",
            "Event ids looked up in event_ids because the filter could not rule them out or was not ready",
            metrics.id_lookups_on_disk.clone(),
        );
        registry.register(
            "scavenge_running",
            "1 while a scavenge runs",
            metrics.scavenge_running.clone(),
        );
        registry.register(
            "scavenge_events_scanned",
            "Events scanned by the current or last scavenge",
            metrics.scavenge_events_scanned.clone(),
        );
        registry.register(
            "scavenge_events_removed",
            "Events removed by the current or last scavenge",
            metrics.scavenge_events_removed.clone(),
        );
        registry.register(
            "scavenge_bytes_reclaimed",
            "Bytes reclaimed by the current or last scavenge",
            metrics.scavenge_bytes_reclaimed.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed (a client that does not trust the certificate, or speaks plain HTTP)",
            metrics.tls_handshake_failures.clone(),
        );
        registry.register(
            "auth_unauthorized",
            "Requests answered 401 (gRPC calls UNAUTHENTICATED): no token, or an unknown one",
            metrics.auth_unauthorized.clone(),
        );
        registry.register(
            "auth_forbidden",
            "Requests answered 403 (gRPC calls PERMISSION_DENIED): a known token without the right",
            metrics.auth_forbidden.clone(),
        );
        registry.register(
            "auth_reloads",
            "Auth file reloads (SIGHUP) that took effect",
            metrics.auth_reloads.clone(),
        );
        registry.register(
            "auth_reload_failures",
            "Auth file reloads refused: the file was unreadable or invalid",
            metrics.auth_reload_failures.clone(),
        );
        registry.register(
            "auth_tokens",
            "Tokens in force (0 with access control off)",
            metrics.auth_tokens.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }
}

impl Metrics {
    /// The counters the writer's spins update (`storage::idle_wait`).
    pub fn writer_spins(&self) -> crate::storage::idle_wait::SpinCounters {
        let outcome = |outcome| {
            self.writer_spins
                .get_or_create(&SpinLabels { outcome })
                .clone()
        };
        crate::storage::idle_wait::SpinCounters {
            caught: outcome("caught"),
            missed: outcome("missed"),
        }
    }

    /// Records one committed group.
    pub fn on_commit(&self, info: &CommitInfo) {
        self.group_requests.observe(info.requests as f64);
        self.group_events.observe(info.events as f64);
        self.fsync_seconds
            .observe(info.write_duration.as_secs_f64());
        self.appended_events.inc_by(info.events as u64);
        self.appended_bytes.inc_by(info.bytes);
        self.append_rate.add(info.events as u64);
        self.unindexed_event_ids
            .set(i64::try_from(info.unindexed_ids).unwrap_or(i64::MAX));
        if let Some(sequence) = info.log_sequence {
            self.replication_applied
                .set(i64::try_from(sequence).unwrap_or(i64::MAX));
        }
    }

    /// Sets the event-id filter's metrics from `stats` (at a scrape).
    pub fn set_id_filter(&self, stats: &crate::storage::IdFilterStats) {
        let gauge = |g: &Gauge, v: u64| g.set(i64::try_from(v).unwrap_or(i64::MAX));
        gauge(&self.id_filter_ready, u64::from(stats.ready));
        gauge(&self.id_filter_ids, stats.ids);
        gauge(&self.id_filter_bytes, stats.bytes);
        // Scrapes may overlap: each difference is added once.
        let seen = self
            .id_lookups_on_disk_seen
            .fetch_max(stats.passed, std::sync::atomic::Ordering::Relaxed);
        self.id_lookups_on_disk
            .inc_by(stats.passed.saturating_sub(seen));
    }

    /// Records events handed to a reader.
    pub fn on_read(&self, events: usize) {
        self.read_events.inc_by(events as u64);
        self.read_rate.add(events as u64);
    }

    /// Events appended per second over the last minute.
    pub fn append_rate(&self) -> f64 {
        self.append_rate.per_second()
    }

    /// Events appended per second in each 10-second interval of the last ten
    /// minutes, oldest first.
    pub fn append_history(&self) -> Vec<f64> {
        self.append_rate.history()
    }

    /// Events read per second over the last minute.
    pub fn read_rate(&self) -> f64 {
        self.read_rate.per_second()
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            tracing::warn!("cannot encode metrics");
        }
        out
    }
}

/// Seconds of per-second counts a [`RateWindow`] keeps: ten minutes, for the
/// console's append-rate chart.
const RATE_WINDOW_SECS: u64 = 600;
/// The width of one [`RateWindow::history`] interval, in seconds.
const HISTORY_STEP_SECS: u64 = 10;

/// Counts in one-second buckets over the last ten minutes (about 10 KB).
struct RateWindow {
    buckets: Mutex<Box<[(u64, u64)]>>,
}

impl Default for RateWindow {
    fn default() -> Self {
        Self {
            buckets: Mutex::new(vec![(0, 0); RATE_WINDOW_SECS as usize].into_boxed_slice()),
        }
    }
}

impl RateWindow {
    fn now_secs() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs()
    }

    fn add(&self, n: u64) {
        self.add_at(Self::now_secs(), n);
    }

    fn add_at(&self, now: u64, n: u64) {
        if let Ok(mut buckets) = self.buckets.lock() {
            let slot = &mut buckets[(now % RATE_WINDOW_SECS) as usize];
            if slot.0 != now {
                *slot = (now, 0);
            }
            slot.1 += n;
        }
    }

    /// The sum of the buckets of the seconds `from..=to`.
    fn sum(buckets: &[(u64, u64)], from: u64, to: u64) -> u64 {
        buckets
            .iter()
            .filter(|(second, _)| (from..=to).contains(second))
            .map(|(_, n)| n)
            .sum()
    }

    /// The mean per second over the last 60 seconds.
    fn per_second(&self) -> f64 {
        let now = Self::now_secs();
        let sum = self
            .buckets
            .lock()
            .map_or(0, |b| Self::sum(&b, now.saturating_sub(59), now));
        sum as f64 / 60.0
    }

    fn history(&self) -> Vec<f64> {
        self.history_at(Self::now_secs())
    }

    /// Per-second rates in each 10-second interval of the last ten minutes,
    /// oldest first; the last interval is the current one, averaged over the
    /// seconds it has had so far.
    fn history_at(&self, now: u64) -> Vec<f64> {
        let Ok(buckets) = self.buckets.lock() else {
            return Vec::new();
        };
        let current = now - now % HISTORY_STEP_SECS;
        let steps = RATE_WINDOW_SECS / HISTORY_STEP_SECS;
        (0..steps)
            .rev()
            .map(|back| {
                let Some(start) = current.checked_sub(back * HISTORY_STEP_SECS) else {
                    return 0.0;
                };
                let end = (start + HISTORY_STEP_SECS - 1).min(now);
                Self::sum(&buckets, start, end) as f64 / (end - start + 1) as f64
            })
            .collect()
    }
}

/// Keeps a gauge raised while alive (a subscription, a waiting long-poll).
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    pub fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_has_ten_second_intervals_of_the_last_ten_minutes() {
        let window = RateWindow::default();
        let now = 10_000_005;
        window.add_at(now, 30); // the current interval, 6 seconds old
        window.add_at(now - 10, 50); // the one before
        window.add_at(now - 15, 50);
        window.add_at(now - 595, 7); // the first interval of the window
        window.add_at(now - 700, 1000); // too old: its slot was reused or is out of range
        let history = window.history_at(now);
        assert_eq!(history.len(), 60);
        assert!((history[59] - 5.0).abs() < 1e-9, "{history:?}");
        assert!((history[58] - 10.0).abs() < 1e-9, "{history:?}");
        assert!((history[0] - 0.7).abs() < 1e-9, "{history:?}");
        assert!(history[1..58].iter().all(|r| *r == 0.0), "{history:?}");
        // Ten minutes on, the same slots hold new seconds and the old counts are gone.
        let later = now + RATE_WINDOW_SECS;
        window.add_at(later, 6);
        let history = window.history_at(later);
        assert!((history[59] - 1.0).abs() < 1e-9, "{history:?}");
        assert!(history[..59].iter().all(|r| *r == 0.0), "{history:?}");
    }

    #[test]
    fn rates_average_over_a_minute_and_render() {
        let metrics = Metrics::default();
        metrics.on_commit(&CommitInfo {
            last_position: Some(5),
            requests: 2,
            events: 6,
            bytes: 600,
            write_duration: Duration::from_millis(1),
            streams: Vec::new(),
            unindexed_ids: 6,
            log_sequence: None,
            appended: None,
        });
        assert!((metrics.append_rate() - 0.1).abs() < 1e-9);
        let text = metrics.render();
        assert!(text.contains("skald_appended_events_total 6"), "{text}");
        assert!(text.contains("skald_unindexed_event_ids 6"), "{text}");
        assert!(
            text.contains("skald_group_commit_fsync_seconds_bucket"),
            "{text}"
        );
        let guard = GaugeGuard::new(&metrics.subscriptions);
        assert!(metrics.render().contains("skald_subscriptions 1"));
        drop(guard);
        assert!(metrics.render().contains("skald_subscriptions 0"));
    }

    #[test]
    fn the_id_filter_metrics_follow_its_stats() {
        let metrics = Metrics::default();
        let stats = |passed| crate::storage::IdFilterStats {
            ready: true,
            ids: 1_000,
            bytes: 2 << 20,
            passed,
        };
        metrics.set_id_filter(&stats(7));
        metrics.set_id_filter(&stats(7));
        // An older count (a scrape that read it earlier and set it later) adds nothing.
        metrics.set_id_filter(&stats(5));
        let text = metrics.render();
        assert!(text.contains("skald_id_filter_ready 1"), "{text}");
        assert!(text.contains("skald_id_filter_ids 1000"), "{text}");
        assert!(text.contains("skald_id_filter_bytes 2097152"), "{text}");
        assert!(text.contains("skald_id_lookups_on_disk_total 7"), "{text}");
        metrics.set_id_filter(&stats(12));
        assert!(metrics
            .render()
            .contains("skald_id_lookups_on_disk_total 12"));
    }
}
