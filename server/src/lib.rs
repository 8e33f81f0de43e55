//! Skald's server: an event store on RocksDB with an HTTP API.
//!
//! - `auth`: the auth file's tokens, roles and stream prefixes.
//! - `config`: flags of `skald serve` and their validation.
//! - `metrics`: Prometheus metrics and one-minute rates.
//! - `model`: validated domain types shared by every layer.
//! - `storage`: RocksDB layout, record codec, the single writer, reads (the only
//!   module that imports `rocksdb`).
//! - `service`: the async facade: appends to the writer, reads on the blocking
//!   pool, commit notifications and long-poll waits.
//! - `subscriptions`: catch-up subscriptions, a cursor over storage plus the
//!   commit notification.
//! - `maintenance`: scavenging and verifying, as cancellable background jobs.
//! - `http`: routing, access checks, request parsing, responses and the one
//!   error mapping.
//! - `server`: binding, serving, reloading on SIGHUP and graceful shutdown.
//! - `connections`: accepting connections (TLS included), their caps and timeouts.
//! - `tls`: the certificate and key of HTTPS.
//! - `cluster`: cluster mode: writes through a replicated NATS JetStream log,
//!   which every node applies to its own store.

pub mod auth;
pub mod cluster;
pub mod config;
pub mod connections;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod grpc;
pub mod http;
pub mod maintenance;
pub mod metrics;
pub mod model;
pub mod server;
pub mod service;
pub mod storage;
pub mod subscriptions;
pub mod tls;

pub use config::{Config, ServeArgs};
pub use server::{Server, ServerError};

/// Shared by the crate's property tests.
#[cfg(test)]
pub(crate) mod testing {
    /// A proptest configuration of `cases` cases whose seed is `SKALD_TEST_SEED`
    /// when set (to replay a run), else random; printed either way.
    pub fn proptest_config(cases: u32) -> proptest::test_runner::Config {
        use proptest::test_runner::{Config, RngSeed};
        let seed = std::env::var("SKALD_TEST_SEED")
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        eprintln!("proptest seed {seed} (replay with SKALD_TEST_SEED={seed})");
        Config {
            cases,
            rng_seed: RngSeed::Fixed(seed),
            ..Config::default()
        }
    }
}
