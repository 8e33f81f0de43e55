//! Stream lifecycle and administration: delete, metadata, the stream catalog,
//! scavenge and verify jobs, server stats.

use reqwest::Method;
use skald_proto::{JobStarted, StreamMetadataAnswer};

use crate::{
    CatalogPage, Client, Error, ExpectedRevision, JobReport, Stats, StreamInfo, StreamMetadata,
};

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
    /// Copy the store, consistently and online, under the server's `--backup-dir`.
    Backup,
}

impl JobKind {
    fn path(self) -> &'static str {
        match self {
            Self::Scavenge => "scavenge",
            Self::Verify => "verify",
            Self::Backup => "backup",
        }
    }
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
        let url = self.url(&["streams", stream])?;
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
        let url = self.url(&["streams", stream, "metadata"])?;
        let answer: StreamMetadataAnswer = self
            .with_retries(Error::is_retryable, || {
                self.send_json(self.inner.http.get(url.clone()))
            })
            .await?;
        Ok(answer.into_metadata())
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
        let answer = self
            .set_stream_metadata_expecting(stream, metadata, ExpectedRevision::Any)
            .await?;
        Ok(answer.into_metadata())
    }

    /// A stream's metadata with its `version` (`None`: never set), for
    /// [`Client::set_stream_metadata_expecting`].
    pub async fn stream_metadata_versioned(
        &self,
        stream: &str,
    ) -> Result<StreamMetadataAnswer, Error> {
        let url = self.url(&["streams", stream, "metadata"])?;
        self.with_retries(Error::is_retryable, || {
            self.send_json(self.inner.http.get(url.clone()))
        })
        .await
    }

    /// Replaces a stream's metadata only while it is at the `expected`
    /// version: `NoStream` (never set), `StreamExists` (set before), `Exact`
    /// (that version) or `Any`. Otherwise nothing changes and the answer is
    /// [`Error::WrongExpectedRevision`], whose `actual` is the current version.
    /// Returns the metadata with its new version.
    ///
    /// ```no_run
    /// # async fn demo(client: skald_client::Client) -> Result<(), skald_client::Error> {
    /// use skald_client::{Error, ExpectedRevision, StreamMetadata};
    /// let current = client.stream_metadata_versioned("audit").await?;
    /// let expected = current.version.map_or(ExpectedRevision::NoStream, ExpectedRevision::Exact);
    /// let mut wanted = current.into_metadata();
    /// wanted.max_count = Some(1000);
    /// match client.set_stream_metadata_expecting("audit", &wanted, expected).await {
    ///     Ok(answer) => println!("now at version {:?}", answer.version),
    ///     Err(Error::WrongExpectedRevision { actual, .. }) => println!("changed meanwhile: {actual:?}"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn set_stream_metadata_expecting(
        &self,
        stream: &str,
        metadata: &StreamMetadata,
        expected: ExpectedRevision,
    ) -> Result<StreamMetadataAnswer, Error> {
        let url = self.url(&["streams", stream, "metadata"])?;
        let mut request = self.inner.http.put(url).json(metadata);
        if expected != ExpectedRevision::Any {
            request = request.query(&[("expected_version", expected.to_string())]);
        }
        self.send_json(request).await
    }

    /// A page of the stream catalog, in name order.
    pub async fn list_streams(
        &self,
        prefix: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<CatalogPage, Error> {
        let mut query = vec![("limit", limit.to_string())];
        if let Some(prefix) = prefix {
            query.push(("prefix", prefix.to_owned()));
        }
        if let Some(after) = after {
            query.push(("after", after.to_owned()));
        }
        let url = self.url(&["admin", "streams"])?;
        self.with_retries(Error::is_retryable, || {
            self.send_json(self.inner.http.get(url.clone()).query(&query))
        })
        .await
    }

    /// One stream's catalog entry.
    pub async fn stream_info(&self, stream: &str) -> Result<StreamInfo, Error> {
        let url = self.url(&["admin", "streams", stream])?;
        self.with_retries(Error::is_retryable, || {
            self.send_json(self.inner.http.get(url.clone()))
        })
        .await
    }

    /// Starts a scavenge (or a dry run) or a verify; returns its id.
    pub async fn start_job(&self, kind: JobKind, dry_run: bool) -> Result<String, Error> {
        let url = self.url(&["admin", kind.path()])?;
        let mut request = self.inner.http.post(url);
        if dry_run {
            request = request.query(&[("dry_run", "true")]);
        }
        let started: JobStarted = self.send_json(request).await?;
        Ok(started.id)
    }

    /// A job's report.
    pub async fn job(&self, kind: JobKind, id: &str) -> Result<JobReport, Error> {
        let url = self.url(&["admin", kind.path(), id])?;
        self.with_retries(Error::is_retryable, || {
            self.send_json(self.inner.http.get(url.clone()))
        })
        .await
    }

    /// Asks a running job to stop.
    pub async fn cancel_job(&self, kind: JobKind, id: &str) -> Result<JobReport, Error> {
        let url = self.url(&["admin", kind.path(), id])?;
        self.send_json(self.inner.http.delete(url)).await
    }

    /// Server statistics (`GET /admin/stats`).
    ///
    /// ```no_run
    /// # async fn demo(client: skald_client::Client) -> Result<(), skald_client::Error> {
    /// let stats = client.stats().await?;
    /// println!("head {:?} on {} bytes", stats.head_position, stats.disk_bytes);
    /// # Ok(()) }
    /// ```
    pub async fn stats(&self) -> Result<Stats, Error> {
        let url = self.url(&["admin", "stats"])?;
        self.with_retries(Error::is_retryable, || {
            self.send_json(self.inner.http.get(url.clone()))
        })
        .await
    }
}
