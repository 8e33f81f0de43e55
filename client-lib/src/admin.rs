//! Stream lifecycle and administration: delete, metadata, the stream catalog,
//! scavenge and verify jobs, server stats.

use std::collections::BTreeMap;

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Client, Error, ExpectedRevision};

/// A stream's limits and custom metadata.
///
/// ```
/// use skald_client::StreamMetadata;
/// let keep_last_week = StreamMetadata { max_age_secs: Some(7 * 86_400), ..StreamMetadata::default() };
/// # let _ = keep_last_week;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamMetadata {
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
    pub custom: Option<Value>,
}

/// A stream as the catalog describes it.
///
/// ```no_run
/// # async fn demo(client: skald_client::Client) -> Result<(), skald_client::Error> {
/// let info = client.stream_info("order-42").await?;
/// println!("{} events, {} bytes, deleted: {}", info.event_count, info.bytes, info.deleted);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct StreamInfo {
    /// The name.
    pub stream: String,
    /// First visible revision still stored.
    pub first_revision: Option<u64>,
    /// Last revision ever appended.
    pub last_revision: Option<u64>,
    /// Visible events stored.
    pub event_count: u64,
    /// Bytes of its stored records.
    pub bytes: u64,
    /// When it was created.
    pub created_at: Option<String>,
    /// When it was last appended to.
    pub last_appended_at: Option<String>,
    /// Soft-deleted (and not appended to since).
    pub deleted: bool,
    /// Hard-deleted.
    pub tombstoned: bool,
    /// Its limits.
    pub metadata: StreamMetadata,
}

/// One page of the stream catalog.
///
/// ```no_run
/// # async fn demo(client: skald_client::Client) -> Result<(), skald_client::Error> {
/// let mut after = None;
/// loop {
///     let page = client.list_streams(Some("order-"), after.as_deref(), 500).await?;
///     for stream in &page.streams {
///         println!("{}", stream.stream);
///     }
///     match page.next_after {
///         Some(next) => after = Some(next),
///         None => break,
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Deserialize)]
pub struct StreamCatalogPage {
    /// The streams, in name order.
    pub streams: Vec<StreamInfo>,
    /// Pass as `after` for the next page; `None` on the last page.
    pub next_after: Option<String>,
}

/// A scavenge or verify job, running or finished.
///
/// ```no_run
/// # async fn demo(client: skald_client::Client) -> Result<(), skald_client::Error> {
/// use skald_client::JobKind;
/// let id = client.start_job(JobKind::Scavenge, false).await?;
/// let report = loop {
///     let report = client.job(JobKind::Scavenge, &id).await?;
///     if !report.is_running() { break report; }
///     tokio::time::sleep(std::time::Duration::from_secs(1)).await;
/// };
/// println!("{}: removed {} events", report.result, report.counter("events_removed"));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Deserialize)]
pub struct JobReport {
    /// Its id.
    pub id: String,
    /// `running`, `completed`, `cancelled` or `failed`.
    pub result: String,
    /// What it is doing.
    pub phase: String,
    /// A dry run (scavenge) removes nothing.
    pub dry_run: bool,
    /// Why it failed.
    pub error: Option<String>,
    /// When it started.
    pub started_at: String,
    /// When it ended.
    pub finished_at: Option<String>,
    /// Problems found (verify).
    #[serde(default)]
    pub problems: Vec<Value>,
    /// Counters: `events_scanned`, `events_removed`, `bytes_reclaimed`, `events_checked`, ...
    #[serde(flatten)]
    pub counters: BTreeMap<String, Value>,
}

impl JobReport {
    /// A counter's value (0 when absent).
    pub fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).and_then(Value::as_u64).unwrap_or(0)
    }

    /// Whether the job still runs.
    pub fn is_running(&self) -> bool {
        self.result == "running"
    }
}

/// Which maintenance job.
///
/// ```no_run
/// # async fn demo(client: skald_client::Client) -> Result<(), skald_client::Error> {
/// let id = client.start_job(skald_client::JobKind::Verify, false).await?;
/// client.cancel_job(skald_client::JobKind::Verify, &id).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    /// Physically remove hidden events.
    Scavenge,
    /// Check every record and index.
    Verify,
}

impl JobKind {
    fn path(self) -> &'static str {
        match self {
            Self::Scavenge => "scavenge",
            Self::Verify => "verify",
        }
    }
}

#[derive(Deserialize)]
struct Started {
    id: String,
}

impl Client {
    /// Soft-deletes `stream` (hidden at once; appending again recreates it), or
    /// with `hard` tombstones it for good.
    ///
    /// ```no_run
    /// # async fn demo(client: skald_client::Client) -> Result<(), skald_client::Error> {
    /// client.delete_stream("order-42", skald_client::ExpectedRevision::Any, false).await?;
    /// # Ok(()) }
    /// ```
    pub async fn delete_stream(
        &self,
        stream: &str,
        expected: ExpectedRevision,
        hard: bool,
    ) -> Result<(), Error> {
        let url = self.url(&["streams", stream]);
        let query = [
            ("expected_revision", expected.to_string()),
            ("hard", hard.to_string()),
        ];
        self.send_empty(self.inner.http.request(Method::DELETE, url).query(&query))
            .await
    }

    /// A stream's metadata.
    ///
    /// ```no_run
    /// # async fn demo(client: skald_client::Client) -> Result<(), skald_client::Error> {
    /// let metadata = client.stream_metadata("audit").await?;
    /// println!("keeps {:?} events", metadata.max_count);
    /// # Ok(()) }
    /// ```
    pub async fn stream_metadata(&self, stream: &str) -> Result<StreamMetadata, Error> {
        let url = self.url(&["streams", stream, "metadata"]);
        self.with_retries(Error::is_retryable, || {
            self.send_json(self.inner.http.get(url.clone()))
        })
        .await
    }

    /// Replaces a stream's metadata (limits apply to reads at once).
    ///
    /// ```no_run
    /// # async fn demo(client: skald_client::Client) -> Result<(), skald_client::Error> {
    /// use skald_client::StreamMetadata;
    /// client.set_stream_metadata("audit", &StreamMetadata { max_count: Some(1000), ..Default::default() }).await?;
    /// # Ok(()) }
    /// ```
    pub async fn set_stream_metadata(
        &self,
        stream: &str,
        metadata: &StreamMetadata,
    ) -> Result<StreamMetadata, Error> {
        let url = self.url(&["streams", stream, "metadata"]);
        self.send_json(self.inner.http.put(url).json(metadata))
            .await
    }

    /// A page of the stream catalog, in name order.
    pub async fn list_streams(
        &self,
        prefix: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<StreamCatalogPage, Error> {
        let mut query = vec![("limit", limit.to_string())];
        if let Some(prefix) = prefix {
            query.push(("prefix", prefix.to_owned()));
        }
        if let Some(after) = after {
            query.push(("after", after.to_owned()));
        }
        let url = self.url(&["admin", "streams"]);
        self.with_retries(Error::is_retryable, || {
            self.send_json(self.inner.http.get(url.clone()).query(&query))
        })
        .await
    }

    /// One stream's catalog entry.
    pub async fn stream_info(&self, stream: &str) -> Result<StreamInfo, Error> {
        let url = self.url(&["admin", "streams", stream]);
        self.with_retries(Error::is_retryable, || {
            self.send_json(self.inner.http.get(url.clone()))
        })
        .await
    }

    /// Starts a scavenge (or a dry run) or a verify; returns its id.
    pub async fn start_job(&self, kind: JobKind, dry_run: bool) -> Result<String, Error> {
        let url = self.url(&["admin", kind.path()]);
        let mut request = self.inner.http.post(url);
        if dry_run {
            request = request.query(&[("dry_run", "true")]);
        }
        let started: Started = self.send_json(request).await?;
        Ok(started.id)
    }

    /// A job's report.
    pub async fn job(&self, kind: JobKind, id: &str) -> Result<JobReport, Error> {
        let url = self.url(&["admin", kind.path(), id]);
        self.with_retries(Error::is_retryable, || {
            self.send_json(self.inner.http.get(url.clone()))
        })
        .await
    }

    /// Asks a running job to stop.
    pub async fn cancel_job(&self, kind: JobKind, id: &str) -> Result<JobReport, Error> {
        let url = self.url(&["admin", kind.path(), id]);
        self.send_json(self.inner.http.delete(url)).await
    }

    /// Server statistics (`GET /admin/stats`).
    ///
    /// ```no_run
    /// # async fn demo(client: skald_client::Client) -> Result<(), skald_client::Error> {
    /// let stats = client.stats().await?;
    /// println!("head {} on {} bytes", stats["head_position"], stats["disk_bytes"]);
    /// # Ok(()) }
    /// ```
    pub async fn stats(&self) -> Result<Value, Error> {
        let url = self.url(&["admin", "stats"]);
        self.with_retries(Error::is_retryable, || {
            self.send_json(self.inner.http.get(url.clone()))
        })
        .await
    }
}
