//! Stream metadata, the stream catalog, maintenance jobs, stats and server info.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A stream's limits and custom metadata: the body of `PUT
/// /streams/{stream}/metadata` (absent fields are unset).
///
/// ```
/// use skald_proto::StreamMetadata;
/// let keep_last_week: StreamMetadata = StreamMetadata { max_age_secs: Some(7 * 86_400), ..StreamMetadata::default() };
/// assert_eq!(serde_json::to_string(&keep_last_week)?, r#"{"max_age_secs":604800}"#);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamMetadata<D = Value> {
    /// Keep only the newest this many events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_count: Option<u64>,
    /// Keep only events younger than this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_secs: Option<u64>,
    /// Hide every revision below this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncate_before: Option<u64>,
    /// Your own JSON object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<D>,
}

impl<D> Default for StreamMetadata<D> {
    fn default() -> Self {
        Self {
            max_count: None,
            max_age_secs: None,
            truncate_before: None,
            custom: None,
        }
    }
}

/// What `GET` and `PUT /streams/{stream}/metadata` answer: the metadata and
/// the stream it belongs to (every field present, `null` when unset).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamMetadataAnswer<D = Value> {
    /// The stream.
    pub stream: String,
    /// Keep only the newest this many events.
    pub max_count: Option<u64>,
    /// Keep only events younger than this many seconds.
    pub max_age_secs: Option<u64>,
    /// Hide every revision below this one.
    pub truncate_before: Option<u64>,
    /// The custom JSON object.
    pub custom: Option<D>,
    /// Which change of the metadata this is: 0 for the first, one more for
    /// each (over HTTP or gRPC); absent before the first. KurrentDB clients
    /// see it as the revision of the `$$stream` metadata event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

impl<D> StreamMetadataAnswer<D> {
    /// The metadata alone.
    pub fn into_metadata(self) -> StreamMetadata<D> {
        StreamMetadata {
            max_count: self.max_count,
            max_age_secs: self.max_age_secs,
            truncate_before: self.truncate_before,
            custom: self.custom,
        }
    }
}

/// A stream as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamInfo<D = Value> {
    /// The name.
    pub stream: String,
    /// First visible revision still stored.
    pub first_revision: Option<u64>,
    /// Last revision ever appended.
    pub last_revision: Option<u64>,
    /// Visible events stored (events past `max_age` count until a read or a
    /// scavenge passes them).
    pub event_count: u64,
    /// Bytes of its stored records.
    pub bytes: u64,
    /// When it was created (RFC 3339).
    pub created_at: Option<String>,
    /// When it was last appended to (RFC 3339).
    pub last_appended_at: Option<String>,
    /// Soft-deleted (and not appended to since).
    pub deleted: bool,
    /// Hard-deleted.
    pub tombstoned: bool,
    /// Its limits.
    pub metadata: StreamMetadataAnswer<D>,
}

/// One page of the stream catalog (`GET /admin/streams`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogPage<D = Value> {
    /// The streams, in name order.
    pub streams: Vec<StreamInfo<D>>,
    /// Pass as `after` for the next page; `None` on the last page.
    pub next_after: Option<String>,
}

/// How a maintenance job ended, or that it has not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobResult {
    /// Still running.
    Running,
    /// Finished its work.
    Completed,
    /// Stopped by a request or a shutdown; a scavenge resumes next time.
    Cancelled,
    /// Stopped by an error (see `error`).
    Failed,
}

impl std::fmt::Display for JobResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Cancelled => "cancelled",
            Self::Failed => "failed",
        })
    }
}

/// A problem a verify found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// The position concerned, when there is one.
    pub position: Option<u64>,
    /// What is wrong.
    pub message: String,
}

/// A scavenge or verify job, running or finished.
///
/// ```
/// let report: skald_proto::JobReport = serde_json::from_str(r#"{"id": "j1", "dry_run": false,
///   "phase": "done", "result": "completed", "error": null, "started_at": "2026-11-26T15:00:00Z",
///   "finished_at": "2026-11-26T15:00:02Z", "events_removed": 40}"#)?;
/// assert_eq!((report.counter("events_removed"), report.is_running()), (40, false));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobReport {
    /// Its id.
    pub id: String,
    /// A dry run (scavenge) removes nothing.
    pub dry_run: bool,
    /// What it is doing (`scanning`, `compacting`, `events`, `index`, `done`).
    pub phase: String,
    /// How it ended, or `running`.
    pub result: JobResult,
    /// Why it failed.
    pub error: Option<String>,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// When it ended (RFC 3339).
    pub finished_at: Option<String>,
    /// Counters: `events_scanned`, `events_removed`, `bytes_reclaimed`,
    /// `events_checked`, ...
    #[serde(flatten)]
    pub counters: BTreeMap<String, u64>,
    /// Problems found (verify), the first 1000.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<Problem>,
}

impl JobReport {
    /// A counter's value (0 when absent).
    pub fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }

    /// Whether the job still runs.
    pub fn is_running(&self) -> bool {
        self.result == JobResult::Running
    }
}

/// What starting a job answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStarted {
    /// The new job's id.
    pub id: String,
}

/// `GET /admin/scavenges`: the running scavenge (if any), then the last 20.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScavengeHistory {
    /// Newest first.
    pub scavenges: Vec<JobReport>,
}

/// `GET /admin/verifies`: the running verify (if any), then the last 20.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifyHistory {
    /// Newest first.
    pub verifies: Vec<JobReport>,
}

/// `GET /admin/backups`: the running backup (if any), then the last 20.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupHistory {
    /// Newest first.
    pub backups: Vec<JobReport>,
}

/// What RocksDB says about itself; `None` where it did not say.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineStats {
    /// Bytes written by flushes and compactions per byte written.
    pub write_amplification: Option<f64>,
    /// Compaction debt.
    pub pending_compaction_bytes: Option<u64>,
    /// Compactions running now.
    pub running_compactions: Option<u64>,
    /// Memtables' size.
    pub memtable_bytes: Option<u64>,
    /// Block cache in use.
    pub block_cache_bytes: Option<u64>,
    /// Index and filter blocks of the open table files, held in memory
    /// outside the block cache (they grow with the data).
    pub table_readers_bytes: Option<u64>,
    /// Table files' size.
    pub sst_bytes: Option<u64>,
}

/// `GET /admin/stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// The last committed position, `None` for an empty store.
    pub head_position: Option<u64>,
    /// RocksDB's estimate of the number of streams.
    pub stream_count_estimate: Option<u64>,
    /// Events stored.
    pub event_count: u64,
    /// Events scavenging has removed, ever.
    pub events_removed_by_scavenging: u64,
    /// Bytes of the data directory.
    pub disk_bytes: u64,
    /// The storage engine.
    pub rocksdb: EngineStats,
    /// Appended events per second over the last minute.
    pub append_rate_per_sec_1m: f64,
    /// Appended events per second in each 10-second interval of the last 10
    /// minutes, oldest first (60 values; the last one is the current interval,
    /// not yet complete).
    #[serde(default)]
    pub append_history: Vec<f64>,
    /// Read events per second over the last minute.
    pub read_rate_per_sec_1m: f64,
    /// Subscriptions connected now.
    pub live_subscriptions: u64,
    /// Long-polls waiting now.
    pub long_polls_waiting: u64,
    /// HTTP connections open now (this one included).
    #[serde(default)]
    pub open_connections: u64,
    /// Write requests queued for or being committed by the writer.
    #[serde(default)]
    pub writer_queue_requests: u64,
    /// KiB of payload queued for or being committed by the writer.
    #[serde(default)]
    pub writer_queue_kib: u64,
    /// The running scavenge.
    pub scavenge: Option<JobReport>,
    /// Cluster mode only: how far this node has applied the replicated log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<ReplicationStats>,
}

/// A cluster node's place in the replicated log (`/admin/stats`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationStats {
    /// The last log sequence this node applied.
    pub applied_sequence: u64,
    /// Log messages this node has not applied yet.
    pub lag_messages: u64,
    /// Whether `/health/ready` answers 200.
    pub ready: bool,
    /// Whether the node stopped applying the log (see its log).
    pub stopped: bool,
}

/// `GET /admin/cluster` (cluster mode): this node and the cluster's registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// This node's id in the registry (kept in its data directory).
    pub node_id: String,
    /// Every registered node -> the log sequence its store had applied when
    /// it last reported (on start and at each scavenge end it applied).
    pub nodes: std::collections::BTreeMap<String, u64>,
    /// Every registered node applied the log up to this sequence, and
    /// JetStream may have purged messages up to it: a node whose store
    /// applied less cannot catch up from the log.
    pub horizon: u64,
    /// The purges for the removals logged up to this sequence are done.
    pub purged_through: u64,
}

/// What `GET /info` tells.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// Server version.
    pub version: String,
    /// Data directory; shown only to an admin (with access control on, one
    /// not limited to stream prefixes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<String>,
    /// Whether access control is on (`--auth-file`).
    #[serde(default)]
    pub auth: bool,
    /// Whether the server answers over TLS.
    #[serde(default)]
    pub tls: bool,
    /// The last committed position, `None` for an empty store.
    pub head_position: Option<u64>,
    /// The async runtime's worker threads (`--worker-threads`); shown only
    /// where `data_dir` is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_threads: Option<usize>,
    /// Who asked, when access control is on: the token's name, role and
    /// stream prefixes (what the console shows and hides). `None` with
    /// access control off, where every caller may do everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<CallerInfo>,
}

/// The token a request was made with, as `/info` tells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallerInfo {
    /// The token's name in the auth file.
    pub name: String,
    /// `reader`, `writer` or `admin`.
    pub role: String,
    /// The stream-name prefixes the token is limited to; `None`: every stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_prefixes: Option<Vec<String>>,
}

/// `GET /health/live`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `ok`.
    pub status: String,
}
