//! `Client` and its builder: appends (retried idempotently), paged reads, server info.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::{BoxStream, StreamExt};
use reqwest::{Method, Url};
use serde::de::DeserializeOwned;

use crate::read::{self, ReadOptions};
use crate::wire::AppendRequest;
use crate::{AllPage, AppendResult, Error, EventData, ExpectedRevision, ServerInfo, StreamPage};

/// Builds a [`Client`].
///
/// ```
/// use std::time::Duration;
/// let client = skald_client::Client::builder("http://127.0.0.1:2114")
///     .timeout(Duration::from_secs(10))
///     .auth_token("skald_0123abcd")
///     .user_agent("billing-service/1.4")
///     .max_retries(5)
///     .build()?;
/// # let _ = client;
/// # Ok::<(), skald_client::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    url: String,
    timeout: Duration,
    connect_timeout: Duration,
    auth_token: Option<String>,
    ca_pem: Option<Vec<u8>>,
    user_agent: String,
    max_retries: u32,
    initial_backoff: Duration,
}

impl ClientBuilder {
    /// Time limit of one request (not of a subscription, which is long-lived). Default 30 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Time limit to establish a connection. Default 5 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// A bearer token sent with every request (`skald token new` makes one;
    /// the server's `--auth-file` gives it a role).
    pub fn auth_token(mut self, token: impl Into<String>) -> Self {
        self.auth_token = Some(token.into());
        self
    }

    /// Trust only the CA certificate(s) in this PEM text for `https://` URLs,
    /// instead of the system's roots: for a server whose certificate comes
    /// from a private CA (or is self-signed).
    ///
    /// ```no_run
    /// let ca = std::fs::read("/etc/skald/ca.pem").expect("CA file");
    /// let client = skald_client::Client::builder("https://skald.internal:2114")
    ///     .ca_certificate_pem(ca)
    ///     .build()?;
    /// # let _ = client;
    /// # Ok::<(), skald_client::Error>(())
    /// ```
    pub fn ca_certificate_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// The `User-Agent` header. Default `skald-client/<version>`.
    pub fn user_agent(mut self, agent: impl Into<String>) -> Self {
        self.user_agent = agent.into();
        self
    }

    /// How often a retryable failure is retried. Default 3.
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.max_retries = retries;
        self
    }

    /// The first retry's delay; each later one doubles it (capped at 5 s). Default 100 ms.
    pub fn initial_backoff(mut self, backoff: Duration) -> Self {
        self.initial_backoff = backoff;
        self
    }

    /// Builds the client.
    pub fn build(self) -> Result<Client, Error> {
        let invalid = |reason: String| Error::InvalidUrl {
            url: self.url.clone(),
            reason,
        };
        let base = Url::parse(&self.url).map_err(|e| invalid(e.to_string()))?;
        if base.cannot_be_a_base() || !matches!(base.scheme(), "http" | "https") {
            return Err(invalid("must be an http:// or https:// URL".into()));
        }
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = &self.auth_token {
            let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| invalid("the auth token is not a valid header value".into()))?;
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let mut http = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .user_agent(self.user_agent.clone())
            .default_headers(headers);
        if let Some(pem) = &self.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| Error::InvalidCertificate(e.to_string()))?;
            if certs.is_empty() {
                return Err(Error::InvalidCertificate(
                    "no CERTIFICATE block in the PEM text".into(),
                ));
            }
            http = http.tls_certs_only(certs);
        }
        let http = http.build().map_err(Error::Transport)?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                base,
                timeout: self.timeout,
                max_retries: self.max_retries,
                initial_backoff: self.initial_backoff,
            }),
        })
    }
}

/// A connection to one Skald server. Cheap to clone; clones share connections.
///
/// ```no_run
/// # async fn demo() -> Result<(), skald_client::Error> {
/// use skald_client::{Client, EventData, ExpectedRevision};
/// let client = Client::new("http://127.0.0.1:2114")?;
/// let event = EventData::json("OrderPlaced", &serde_json::json!({"total": 30}))?;
/// let result = client.append("order-42", ExpectedRevision::NoStream, [event]).await?;
/// println!("stored at position {}", result.first_position);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) http: reqwest::Client,
    base: Url,
    timeout: Duration,
    max_retries: u32,
    initial_backoff: Duration,
}

impl Client {
    /// A builder for a client of the server at `url` (e.g. `http://127.0.0.1:2114`).
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            url: url.into(),
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            auth_token: None,
            ca_pem: None,
            user_agent: concat!("skald-client/", env!("CARGO_PKG_VERSION")).to_owned(),
            max_retries: 3,
            initial_backoff: Duration::from_millis(100),
        }
    }

    /// A client with default settings.
    ///
    /// ```
    /// let client = skald_client::Client::new("http://127.0.0.1:2114")?;
    /// assert!(skald_client::Client::new("not a url").is_err());
    /// # let _ = client;
    /// # Ok::<(), skald_client::Error>(())
    /// ```
    pub fn new(url: impl Into<String>) -> Result<Self, Error> {
        Self::builder(url).build()
    }

    /// Appends `events` to `stream` if its last revision satisfies `expected`.
    ///
    /// On a transport failure the same request (same event ids) is sent again,
    /// up to `max_retries` times: if the first attempt was stored after all, the
    /// server recognises the ids and returns the original result.
    ///
    /// ```no_run
    /// # async fn demo(client: skald_client::Client) -> Result<(), skald_client::Error> {
    /// use skald_client::{Error, EventData, ExpectedRevision};
    /// let paid = EventData::json("OrderPaid", &serde_json::json!({"amount": 30}))?;
    /// match client.append("order-42", ExpectedRevision::Exact(0), [paid]).await {
    ///     Ok(result) => println!("now at revision {}", result.last_revision),
    ///     Err(Error::WrongExpectedRevision { actual, .. }) => println!("someone else wrote; stream is at {actual:?}"),
    ///     Err(other) => return Err(other),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn append(
        &self,
        stream: &str,
        expected: ExpectedRevision,
        events: impl IntoIterator<Item = EventData>,
    ) -> Result<AppendResult, Error> {
        let request = AppendRequest {
            expected_revision: expected,
            events: events.into_iter().map(EventData::into_wire).collect(),
        };
        let body = serde_json::to_vec(&request).map_err(Error::Serialize)?;
        let url = self.url(&["streams", stream])?;
        // Only failures where the request may not have arrived: resending the same
        // ids is then safe, because the server recognises a stored batch.
        self.with_retries(
            |e| matches!(e, Error::Transport(_) | Error::Timeout(_)),
            || {
                let request = self
                    .inner
                    .http
                    .request(Method::POST, url.clone())
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone());
                self.send_json(request)
            },
        )
        .await
    }

    /// Reads one page of a stream. Most callers want [`Client::read_stream`].
    ///
    /// ```no_run
    /// # async fn demo(client: skald_client::Client) -> Result<(), skald_client::Error> {
    /// let page = client.read_stream_page("order-42", &skald_client::ReadOptions::default().page_size(10)).await?;
    /// println!("{} events, more from {:?}", page.events.len(), page.next_revision);
    /// # Ok(()) }
    /// ```
    pub async fn read_stream_page(
        &self,
        stream: &str,
        options: &ReadOptions,
    ) -> Result<StreamPage, Error> {
        let url = self.url(&["streams", stream])?;
        let query = options.stream_query();
        self.with_retries(Error::is_retryable, || {
            self.send_json(self.get(url.clone()).query(&query))
        })
        .await
    }

    /// Reads one page of `$all`. Most callers want [`Client::read_all`].
    ///
    /// ```no_run
    /// # async fn demo(client: skald_client::Client) -> Result<(), skald_client::Error> {
    /// let page = client.read_all_page(&skald_client::ReadOptions::default().from(1000)).await?;
    /// println!("head is {:?}; continue at {:?}", page.head_position, page.next_position);
    /// # Ok(()) }
    /// ```
    pub async fn read_all_page(&self, options: &ReadOptions) -> Result<AllPage, Error> {
        let url = self.url(&["all"])?;
        let query = options.all_query();
        self.with_retries(Error::is_retryable, || {
            self.send_json(self.get(url.clone()).query(&query))
        })
        .await
    }

    /// The events of `stream`, paged through on demand.
    ///
    /// ```no_run
    /// # async fn demo(client: skald_client::Client) -> Result<(), skald_client::Error> {
    /// use futures::TryStreamExt;
    /// use skald_client::ReadOptions;
    /// let events: Vec<_> = client.read_stream("order-42", ReadOptions::default()).try_collect().await?;
    /// let newest = client.read_stream("order-42", ReadOptions::default().backward().max_count(1));
    /// # let _ = (events, newest);
    /// # Ok(()) }
    /// ```
    pub fn read_stream(
        &self,
        stream: &str,
        options: ReadOptions,
    ) -> BoxStream<'static, Result<crate::RecordedEvent, Error>> {
        read::stream_events(self.clone(), stream.to_owned(), options).boxed()
    }

    /// The events of `$all` (filtered by the options' prefixes), paged through on demand.
    ///
    /// ```no_run
    /// # async fn demo(client: skald_client::Client) -> Result<(), skald_client::Error> {
    /// use futures::StreamExt;
    /// use skald_client::ReadOptions;
    /// let mut orders = client.read_all(ReadOptions::default().stream_prefix("order-"));
    /// while let Some(event) = orders.next().await {
    ///     println!("{}", event?.event_type);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn read_all(
        &self,
        options: ReadOptions,
    ) -> BoxStream<'static, Result<crate::RecordedEvent, Error>> {
        read::all_events(self.clone(), options).boxed()
    }

    /// What the server says about itself, including its head position.
    ///
    /// ```no_run
    /// # async fn demo(client: skald_client::Client) -> Result<(), skald_client::Error> {
    /// let info = client.info().await?;
    /// println!("Skald {} at head {:?}", info.version, info.head_position);
    /// # Ok(()) }
    /// ```
    pub async fn info(&self) -> Result<ServerInfo, Error> {
        let url = self.url(&["info"])?;
        self.with_retries(Error::is_retryable, || {
            self.send_json(self.get(url.clone()))
        })
        .await
    }

    /// Returns once the server's head has reached `position` (for a caller that
    /// just appended and hands the position to a reader), or `Error::Timeout`.
    ///
    /// ```no_run
    /// # async fn demo(client: skald_client::Client, position: u64) -> Result<(), skald_client::Error> {
    /// client.wait_for_position(position, std::time::Duration::from_secs(5)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn wait_for_position(&self, position: u64, timeout: Duration) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // A long-poll that answers as soon as anything at or past `position` commits.
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let wait_ms = left.as_millis().min(60_000) as u64;
            let url = self.url(&["all"])?;
            let query = [
                ("from", position.to_string()),
                ("limit", "1".into()),
                ("wait_ms", wait_ms.to_string()),
            ];
            let request = self
                .get(url)
                .query(&query)
                .timeout(left + Duration::from_secs(5));
            let page: AllPage = self.send_json(request).await?;
            if page.head_position.is_some_and(|head| head >= position) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Timeout(timeout));
            }
        }
    }

    /// The URL of `segments` under the base URL, each segment percent-encoded.
    /// `.` and `..` are refused: URL normalisation would drop them (even encoded
    /// as `%2E`), so the request would reach another resource; the server refuses
    /// such stream names too.
    pub(crate) fn url(&self, segments: &[&str]) -> Result<Url, Error> {
        if let Some(dot) = segments.iter().find(|s| matches!(**s, "." | "..")) {
            return Err(Error::BadRequest {
                code: "invalid_stream_name".into(),
                message: format!("stream name must not be '.' or '..', got '{dot}'"),
            });
        }
        let mut url = self.inner.base.clone();
        url.path_segments_mut()
            .expect("checked in build")
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    fn get(&self, url: Url) -> reqwest::RequestBuilder {
        self.inner.http.get(url)
    }

    pub(crate) async fn send_empty(&self, request: reqwest::RequestBuilder) -> Result<(), Error> {
        let timeout = self.inner.timeout;
        let response = request
            .timeout(timeout)
            .send()
            .await
            .map_err(transport(timeout))?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let body = response.bytes().await.map_err(transport(timeout))?;
            return Err(Error::from_response(status, &body));
        }
        Ok(())
    }

    pub(crate) async fn send_json<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, Error> {
        let timeout = self.inner.timeout;
        let response = request
            .timeout(timeout)
            .send()
            .await
            .map_err(transport(timeout))?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(transport(timeout))?;
        if !(200..300).contains(&status) {
            return Err(Error::from_response(status, &body));
        }
        serde_json::from_slice(&body)
            .map_err(|e| Error::Decode(format!("{e}: {}", String::from_utf8_lossy(&body))))
    }

    /// Runs `attempt` until it succeeds, fails with an error `retry` refuses, or
    /// the retries are spent, waiting with exponential backoff in between.
    pub(crate) async fn with_retries<T, F, Fut>(
        &self,
        retry: impl Fn(&Error) -> bool,
        attempt: F,
    ) -> Result<T, Error>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let mut backoff = self.inner.initial_backoff;
        let mut tries = 0;
        loop {
            match attempt().await {
                Err(e) if tries < self.inner.max_retries && retry(&e) => {
                    tracing::debug!(error = %e, tries, "retrying after {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    tries += 1;
                }
                other => return other,
            }
        }
    }

    pub(crate) fn initial_backoff(&self) -> Duration {
        self.inner.initial_backoff
    }
}

/// The longest wait between two retries.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub(crate) fn transport(timeout: Duration) -> impl Fn(reqwest::Error) -> Error {
    move |e| {
        if e.is_timeout() {
            Error::Timeout(timeout)
        } else {
            Error::Transport(e)
        }
    }
}
