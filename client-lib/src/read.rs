//! Read options and the paging streams behind `Client::read_stream` / `read_all`.

use futures::Stream;

use crate::{Client, Error, RecordedEvent};

/// Which way a read walks.
///
/// ```
/// use skald_client::{Direction, ReadOptions};
/// let newest_first = ReadOptions::default().direction(Direction::Backward);
/// # let _ = newest_first;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    /// Oldest first.
    #[default]
    Forward,
    /// Newest first.
    Backward,
}

/// Options of a read.
///
/// ```
/// use skald_client::ReadOptions;
/// let newest_ten = ReadOptions::default().backward().max_count(10);
/// let orders_from_100 = ReadOptions::default().from(100).stream_prefix("order-").page_size(1000);
/// # let _ = (newest_ten, orders_from_100);
/// ```
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    pub(crate) from: Option<u64>,
    pub(crate) direction: Direction,
    pub(crate) page_size: Option<u32>,
    pub(crate) max_count: Option<u64>,
    pub(crate) stream_prefix: Option<String>,
    pub(crate) type_prefix: Option<String>,
}

impl ReadOptions {
    /// Start at this revision (stream) or position (`$all`), inclusive.
    pub fn from(mut self, from: u64) -> Self {
        self.from = Some(from);
        self
    }

    /// Read newest first.
    pub fn backward(mut self) -> Self {
        self.direction = Direction::Backward;
        self
    }

    /// Read in this direction.
    pub fn direction(mut self, direction: Direction) -> Self {
        self.direction = direction;
        self
    }

    /// Events per request, 1..=4096 (server default 100).
    pub fn page_size(mut self, size: u32) -> Self {
        self.page_size = Some(size);
        self
    }

    /// Stop after this many events.
    pub fn max_count(mut self, count: u64) -> Self {
        self.max_count = Some(count);
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

    fn common(&self) -> Vec<(&'static str, String)> {
        let mut query = Vec::new();
        if let Some(from) = self.from {
            query.push(("from", from.to_string()));
        }
        if self.direction == Direction::Backward {
            query.push(("direction", "backward".into()));
        }
        let limit = match (self.page_size, self.max_count) {
            (Some(size), Some(max)) => Some(u64::from(size).min(max).max(1)),
            (Some(size), None) => Some(u64::from(size)),
            (None, Some(max)) => Some(max.clamp(1, 4096)),
            (None, None) => None,
        };
        if let Some(limit) = limit {
            query.push(("limit", limit.to_string()));
        }
        query
    }

    pub(crate) fn stream_query(&self) -> Vec<(&'static str, String)> {
        self.common()
    }

    pub(crate) fn all_query(&self) -> Vec<(&'static str, String)> {
        let mut query = self.common();
        if let Some(prefix) = &self.stream_prefix {
            query.push(("stream_prefix", prefix.clone()));
        }
        if let Some(prefix) = &self.type_prefix {
            query.push(("type_prefix", prefix.clone()));
        }
        query
    }
}

struct Pager {
    client: Client,
    options: ReadOptions,
    buffer: std::vec::IntoIter<RecordedEvent>,
    delivered: u64,
    done: bool,
}

impl Pager {
    fn new(client: Client, options: ReadOptions) -> Self {
        Self {
            client,
            options,
            buffer: Vec::new().into_iter(),
            delivered: 0,
            done: false,
        }
    }

    fn take(&mut self) -> Option<RecordedEvent> {
        if self
            .options
            .max_count
            .is_some_and(|max| self.delivered >= max)
        {
            return None;
        }
        let event = self.buffer.next()?;
        self.delivered += 1;
        Some(event)
    }

    fn refill(&mut self, events: Vec<RecordedEvent>, next: Option<u64>) {
        self.buffer = events.into_iter();
        match next {
            Some(next) => self.options.from = Some(next),
            None => self.done = true,
        }
    }
}

fn paging<F, Fut>(
    pager: Pager,
    fetch: F,
) -> impl Stream<Item = Result<RecordedEvent, Error>> + Send + 'static
where
    F: Fn(Client, ReadOptions) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(Vec<RecordedEvent>, Option<u64>), Error>> + Send,
{
    futures::stream::unfold((pager, fetch), |(mut pager, fetch)| async move {
        loop {
            if let Some(event) = pager.take() {
                return Some((Ok(event), (pager, fetch)));
            }
            let capped = pager
                .options
                .max_count
                .is_some_and(|max| pager.delivered >= max);
            if pager.done || capped {
                return None;
            }
            match fetch(pager.client.clone(), pager.options.clone()).await {
                Ok((events, next)) => pager.refill(events, next),
                Err(e) => {
                    pager.done = true;
                    return Some((Err(e), (pager, fetch)));
                }
            }
        }
    })
}

pub(crate) fn stream_events(
    client: Client,
    stream: String,
    options: ReadOptions,
) -> impl Stream<Item = Result<RecordedEvent, Error>> + Send + 'static {
    let stream = std::sync::Arc::new(stream);
    paging(Pager::new(client, options), move |client, options| {
        let stream = std::sync::Arc::clone(&stream);
        async move {
            let page = client.read_stream_page(&stream, &options).await?;
            Ok((page.events, page.next_revision))
        }
    })
}

pub(crate) fn all_events(
    client: Client,
    options: ReadOptions,
) -> impl Stream<Item = Result<RecordedEvent, Error>> + Send + 'static {
    paging(Pager::new(client, options), |client, options| async move {
        let page = client.read_all_page(&options).await?;
        // Filtered pages may be empty while more remains: continue until the head.
        let next = page
            .next_position
            .filter(|next| page.head_position.is_some_and(|head| *next <= head));
        Ok((page.events, next))
    })
}
