//! Subscriptions: the server's pushed NDJSON stream, parsed into typed messages,
//! reconnecting from the last delivered place after a dropped connection.

use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use skald_proto::SubscriptionLine;

use crate::client::{transport, MAX_BACKOFF};
use crate::{Client, Error, RecordedEvent};

/// Options of a subscription.
///
/// ```
/// use skald_client::SubscribeOptions;
/// let live_orders = SubscribeOptions::default().from_end().stream_prefix("order-");
/// let resume = SubscribeOptions::default().from(1_042).heartbeat(std::time::Duration::from_secs(5));
/// # let _ = (live_orders, resume);
/// ```
#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    pub(crate) from: Start,
    pub(crate) stream_prefix: Option<String>,
    pub(crate) type_prefix: Option<String>,
    pub(crate) checkpoint_every: Option<u64>,
    pub(crate) heartbeat: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    At(u64),
    End,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        Self {
            from: Start::At(0),
            stream_prefix: None,
            type_prefix: None,
            checkpoint_every: None,
            heartbeat: Duration::from_secs(10),
        }
    }
}

impl SubscribeOptions {
    /// Deliver from this position (`$all`) or revision (stream), inclusive. Default 0.
    pub fn from(mut self, from: u64) -> Self {
        self.from = Start::At(from);
        self
    }

    /// Deliver only events committed after the subscription starts.
    pub fn from_end(mut self) -> Self {
        self.from = Start::End;
        self
    }

    /// Only events of streams starting with `prefix` (`$all` only).
    pub fn stream_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.stream_prefix = Some(prefix.into());
        self
    }

    /// Only events whose type starts with `prefix` (`$all` only).
    pub fn type_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.type_prefix = Some(prefix.into());
        self
    }

    /// A checkpoint at least every this many examined positions (`$all` only).
    pub fn checkpoint_every(mut self, every: u64) -> Self {
        self.checkpoint_every = Some(every);
        self
    }

    /// How often the server sends a heartbeat when idle. The client reconnects
    /// after three heartbeats' worth of silence. Default 10 s.
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every;
        self
    }
}

/// One message of a subscription.
///
/// ```no_run
/// # async fn demo(client: skald_client::Client) -> Result<(), skald_client::Error> {
/// use futures::StreamExt;
/// use skald_client::{SubscribeOptions, SubscriptionMessage};
/// let mut last_place = None;
/// let mut messages = client.subscribe_all(SubscribeOptions::default().stream_prefix("order-"));
/// while let Some(message) = messages.next().await {
///     match message? {
///         SubscriptionMessage::Event(e) => last_place = Some(e.position),
///         SubscriptionMessage::Checkpoint { position } => last_place = Some(position),
///         SubscriptionMessage::CaughtUp { .. } => println!("live at {last_place:?}"),
///         _ => {}
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SubscriptionMessage {
    /// The next event.
    Event(RecordedEvent),
    /// Everything committed up to `position` (for a stream: revision) was
    /// delivered; the subscription is live. Sent again after `FellBehind` and after
    /// a reconnect.
    CaughtUp {
        /// The head when the subscriber reached it, `None` when there was nothing.
        position: Option<u64>,
    },
    /// The subscriber fell far behind the head and is catching up again.
    FellBehind {
        /// The last place examined.
        position: u64,
    },
    /// Every event up to and including `position` was examined; store it to
    /// resume a filtered subscription at `position + 1`.
    Checkpoint {
        /// The last position examined.
        position: u64,
    },
}

#[derive(Debug, Clone)]
pub(crate) enum Target {
    All,
    Stream(String),
}

type Body = std::pin::Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

struct Subscription {
    client: Client,
    target: Target,
    options: SubscribeOptions,
    /// Where to resume after a reconnect: the next place not yet delivered.
    resume: Start,
    body: Option<Body>,
    buffer: Vec<u8>,
    backoff: Duration,
    done: bool,
}

pub(crate) fn subscribe(
    client: Client,
    target: Target,
    options: SubscribeOptions,
) -> impl Stream<Item = Result<SubscriptionMessage, Error>> + Send + 'static {
    let backoff = client.initial_backoff();
    let state = Subscription {
        client,
        target,
        resume: options.from,
        options,
        body: None,
        buffer: Vec::new(),
        backoff,
        done: false,
    };
    futures::stream::unfold(state, |mut state| async move {
        let item = state.next().await?;
        Some((item, state))
    })
}

impl Subscription {
    async fn next(&mut self) -> Option<Result<SubscriptionMessage, Error>> {
        loop {
            if self.done {
                return None;
            }
            if self.body.is_none() {
                match self.connect().await {
                    Ok(body) => self.body = Some(body),
                    Err(e) if e.is_retryable() => {
                        self.pause(&e).await;
                        continue;
                    }
                    Err(e) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                }
            }
            let line = match self.next_line().await {
                Some(line) => line,
                None => {
                    // Dropped, ended or silent connection: reconnect where we are.
                    self.body = None;
                    self.buffer.clear();
                    tokio::time::sleep(self.backoff).await;
                    continue;
                }
            };
            match self.parse(&line) {
                Ok(Some(message)) => {
                    self.backoff = self.client.initial_backoff();
                    return Some(Ok(message));
                }
                Ok(None) => {}
                Err(e) if e.is_retryable() => {
                    self.body = None;
                    self.buffer.clear();
                    self.pause(&e).await;
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }

    async fn pause(&mut self, error: &Error) {
        tracing::debug!(%error, backoff = ?self.backoff, "subscription reconnecting");
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    async fn connect(&mut self) -> Result<Body, Error> {
        let (url, mut query) = match &self.target {
            Target::All => {
                let mut query = Vec::new();
                if let Some(p) = &self.options.stream_prefix {
                    query.push(("stream_prefix", p.clone()));
                }
                if let Some(p) = &self.options.type_prefix {
                    query.push(("type_prefix", p.clone()));
                }
                if let Some(every) = self.options.checkpoint_every {
                    query.push(("checkpoint_every", every.to_string()));
                }
                (self.client.url(&["subscriptions", "all"])?, query)
            }
            Target::Stream(stream) => (
                self.client.url(&["subscriptions", "streams", stream])?,
                Vec::new(),
            ),
        };
        query.push((
            "from",
            match self.resume {
                Start::At(at) => at.to_string(),
                Start::End => "end".into(),
            },
        ));
        query.push((
            "heartbeat_ms",
            self.options.heartbeat.as_millis().to_string(),
        ));
        let timeout = self.options.heartbeat * 3;
        let response = tokio::time::timeout(
            timeout,
            self.client.inner.http.get(url).query(&query).send(),
        )
        .await
        .map_err(|_| Error::Timeout(timeout))?
        .map_err(transport(timeout))?;
        let status = response.status().as_u16();
        if status != 200 {
            let body = response.bytes().await.map_err(transport(timeout))?;
            return Err(Error::from_response(status, &body));
        }
        Ok(Box::pin(response.bytes_stream()))
    }

    /// The next complete line; `None` when the connection ended, failed or went
    /// silent for three heartbeats.
    async fn next_line(&mut self) -> Option<Vec<u8>> {
        let silence = self.options.heartbeat * 3;
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                return Some(line);
            }
            let body = self.body.as_mut()?;
            match tokio::time::timeout(silence, body.next()).await {
                Ok(Some(Ok(chunk))) => self.buffer.extend_from_slice(&chunk),
                Ok(Some(Err(e))) => {
                    tracing::debug!(error = %e, "subscription connection failed");
                    return None;
                }
                Ok(None) => return None,
                Err(_) => {
                    tracing::debug!(?silence, "subscription silent; reconnecting");
                    return None;
                }
            }
        }
    }

    /// Parses one line; `Ok(None)` for heartbeats and lines to skip.
    fn parse(&mut self, line: &[u8]) -> Result<Option<SubscriptionMessage>, Error> {
        let line: SubscriptionLine = serde_json::from_slice(line)
            .map_err(|e| Error::Decode(format!("subscription line: {e}")))?;
        let message = match line {
            SubscriptionLine::Event { event } => {
                let at = match self.target {
                    Target::All => event.position,
                    Target::Stream(_) => event.revision,
                };
                self.resume = Start::At(at + 1);
                SubscriptionMessage::Event(event)
            }
            SubscriptionLine::CaughtUp(place) => {
                let position = place.value();
                if self.resume == Start::End {
                    self.resume = Start::At(position.map_or(0, |p| p + 1));
                }
                SubscriptionMessage::CaughtUp { position }
            }
            SubscriptionLine::FellBehind(place) => SubscriptionMessage::FellBehind {
                position: place.value().unwrap_or(0),
            },
            SubscriptionLine::Checkpoint(place) => {
                let position = place
                    .value()
                    .ok_or_else(|| Error::Decode("checkpoint without position".into()))?;
                self.resume = Start::At(position + 1);
                SubscriptionMessage::Checkpoint { position }
            }
            SubscriptionLine::Error { error, message } => {
                return Err(Error::SubscriptionEnded {
                    code: error,
                    message,
                })
            }
            SubscriptionLine::Heartbeat => return Ok(None),
        };
        Ok(Some(message))
    }
}

impl Client {
    /// Subscribes to `$all`: every event from `options`' start, then live.
    /// Reconnects by itself after a dropped connection or a server restart, from
    /// the last place it delivered, so no event is missed or repeated.
    ///
    /// ```no_run
    /// # async fn demo(client: skald_client::Client) -> Result<(), skald_client::Error> {
    /// use futures::StreamExt;
    /// use skald_client::{SubscribeOptions, SubscriptionMessage};
    /// let mut subscription = client.subscribe_all(SubscribeOptions::default().stream_prefix("order-"));
    /// while let Some(message) = subscription.next().await {
    ///     match message? {
    ///         SubscriptionMessage::Event(event) => println!("{} {}", event.position, event.event_type),
    ///         SubscriptionMessage::CaughtUp { .. } => println!("live"),
    ///         _ => {}
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn subscribe_all(
        &self,
        options: SubscribeOptions,
    ) -> BoxStream<'static, Result<SubscriptionMessage, Error>> {
        subscribe(self.clone(), Target::All, options).boxed()
    }

    /// Subscribes to one stream (positions in the options are revisions).
    ///
    /// ```no_run
    /// # async fn demo(client: skald_client::Client) -> Result<(), skald_client::Error> {
    /// use futures::StreamExt;
    /// let mut order = client.subscribe_stream("order-42", skald_client::SubscribeOptions::default());
    /// let first = order.next().await;
    /// # let _ = first;
    /// # Ok(()) }
    /// ```
    pub fn subscribe_stream(
        &self,
        stream: &str,
        options: SubscribeOptions,
    ) -> BoxStream<'static, Result<SubscriptionMessage, Error>> {
        subscribe(self.clone(), Target::Stream(stream.to_owned()), options).boxed()
    }
}
