//! A typed async client for the Skald event store,
//! and a runner for projections (read models) fed from its global log.
//!
//! ```no_run
//! use futures::{StreamExt, TryStreamExt};
//! use skald_client::{Client, EventData, ExpectedRevision, ReadOptions, SubscribeOptions, SubscriptionMessage};
//!
//! # async fn demo() -> Result<(), skald_client::Error> {
//! let client = Client::new("http://127.0.0.1:2114")?;
//!
//! // Append with optimistic concurrency.
//! let placed = EventData::json("OrderPlaced", &serde_json::json!({"total": 30}))?;
//! let appended = client.append("order-42", ExpectedRevision::NoStream, [placed]).await?;
//!
//! // Read a stream back.
//! let events: Vec<_> = client.read_stream("order-42", ReadOptions::default()).try_collect().await?;
//! let total: serde_json::Value = events[0].data_as()?;
//!
//! // Follow the global log live.
//! let mut live = client.subscribe_all(SubscribeOptions::default().from(appended.first_position));
//! while let Some(message) = live.next().await {
//!     if let SubscriptionMessage::Event(event) = message? {
//!         println!("{} {} {}", event.position, event.stream, event.event_type);
//!     }
//! }
//! # let _ = total;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

#[cfg(feature = "http")]
mod admin;
#[cfg(feature = "http")]
mod client;
mod error;
#[cfg(feature = "http")]
pub mod projection;
#[cfg(feature = "http")]
mod read;
#[cfg(feature = "http")]
mod subscribe;
mod types;
pub mod wire;

#[cfg(feature = "http")]
pub use admin::JobKind;
#[cfg(feature = "http")]
pub use client::{Client, ClientBuilder};
pub use error::Error;
#[cfg(feature = "http")]
pub use read::{Direction, ReadOptions};
pub use skald_proto::{
    AllPage, AppendResult, CatalogPage, ExpectedRevision, JobReport, JobResult, RecordedEvent,
    ServerInfo, Stats, StreamInfo, StreamMetadata, StreamMetadataAnswer, StreamPage,
};
#[cfg(feature = "http")]
pub use subscribe::{SubscribeOptions, SubscriptionMessage};
pub use types::EventData;

/// A page of the stream catalog (the name this crate used before `skald-proto`).
pub type StreamCatalogPage = CatalogPage;
