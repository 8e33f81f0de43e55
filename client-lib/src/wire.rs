//! The JSON shapes of Skald's HTTP API: the types of the `skald-proto` crate,
//! which the server uses too, re-exported with `serde_json::Value` payloads.

pub use skald_proto::*;
