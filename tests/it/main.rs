//! End-to-end tests: each starts the real server binary and drives it over HTTP.

mod append;
mod auth;
mod backup;
mod cli;
mod client;
mod cluster;
mod concurrency;
mod console;
mod disk_full;
mod durability;
mod hostile;
mod kurrentdb;
mod kurrentdb_rust;
mod lifecycle;
mod limits;
mod long_poll;
mod projections;
mod read;
mod scavenge;
mod serve;
mod subscriptions;
mod support;
mod tls;
mod validation;
