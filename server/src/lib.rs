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
    use proptest::prelude::*;

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

    /// JSON texts of `leaf` values in arrays and objects (keys from `key`),
    /// nested up to `depth` levels, with `space` after every `,` and `:`.
    pub fn json_tree(
        leaf: BoxedStrategy<String>,
        key: BoxedStrategy<String>,
        depth: u32,
        space: &'static str,
    ) -> impl Strategy<Value = String> + Clone {
        leaf.prop_recursive(depth, 64, 4, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4)
                    .prop_map(move |v| format!("[{}]", v.join(&format!(",{space}")))),
                proptest::collection::vec((key.clone(), inner), 0..4).prop_map(move |v| {
                    let fields: Vec<String> = v
                        .into_iter()
                        .map(|(k, v)| format!("{k}:{space}{v}"))
                        .collect();
                    format!("{{{}}}", fields.join(&format!(",{space}")))
                }),
            ]
        })
    }

    /// A JSON text meant to reach every corner of the reader rules' checks:
    /// escaped surrogates (paired and lone), numbers long, short and with
    /// exponents around f64's range, nesting around the limit.
    pub fn arb_json() -> impl Strategy<Value = String> {
        let hex = prop_oneof![
            (0xd800u32..0xe000).prop_map(|u| format!("{u:04x}")),
            (0xd800u32..0xe000).prop_map(|u| format!("{u:04X}")),
            any::<u16>().prop_map(|u| format!("{u:04x}")),
        ];
        let piece = prop_oneof![
            "[a-z 😀é/]{0,6}",
            Just("\\\"".to_owned()),
            Just("\\n".to_owned()),
            Just("\\\\".to_owned()),
            hex.prop_map(|h| format!("\\u{h}")),
            Just("\\ud83d\\ude00".to_owned()),
        ];
        let string =
            proptest::collection::vec(piece, 0..5).prop_map(|p| format!("\"{}\"", p.concat()));
        let number = prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            (1usize..400).prop_map(|n| format!("-9{}", "9".repeat(n))),
            (any::<bool>(), -500i32..500)
                .prop_map(|(e, n)| format!("1.5{}{n}", if e { "e" } else { "E" })),
            Just("0.25".to_owned()),
        ];
        let leaf = prop_oneof![
            string.clone(),
            number,
            Just("true".to_owned()),
            Just("null".to_owned())
        ];
        let value = json_tree(leaf.boxed(), string.boxed(), 8, "");
        (value, 0usize..70).prop_map(|(v, n)| format!("{}{v}{}", "[".repeat(n), "]".repeat(n)))
    }
}
