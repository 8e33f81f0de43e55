//! Skald's wire types: every JSON shape a request, a response or a
//! subscription line of the HTTP API has, defined once for the server and
//! `skald-client` (serde and uuid, no I/O). Event payloads are generic: the
//! client uses `serde_json::Value`, the server `Box<RawValue>` (stored JSON goes
//! out without being parsed into a tree).
//!
//! - `expected`: the expected revision of an append or delete, and its rule.
//! - `events`: events to append, events as recorded, pages of reads.
//! - `error`: the error body every 4xx/5xx answer has.
//! - `admin`: stream metadata, the catalog, maintenance jobs, stats, info.
//! - `subscription`: the lines of a pushed subscription.
#![warn(missing_docs)]

mod admin;
mod error;
mod events;
mod expected;
mod subscription;

pub use admin::{
    BackupHistory, CallerInfo, CatalogPage, ClusterInfo, EngineStats, Health, JobReport, JobResult,
    JobStarted, Problem, ReplicationStats, ScavengeHistory, ServerInfo, Stats, StreamInfo,
    StreamMetadata, StreamMetadataAnswer, VerifyHistory,
};
pub use error::{ErrorBody, ErrorDetails};
pub use events::{
    AllPage, AppendRequest, AppendResult, DecodeError, NewEvent, RecordedEvent, StreamPage,
};
pub use expected::ExpectedRevision;
pub use subscription::{Place, SubscriptionLine};
