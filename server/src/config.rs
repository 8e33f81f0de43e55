//! Server configuration: command-line flags, each also an `SKALD_*` environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Flags of `skald serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Directory of the RocksDB data (created when missing).
    #[arg(long, env = "SKALD_DATA_DIR", default_value = "./skald-data")]
    pub data_dir: PathBuf,
    /// Address to listen on (use port 0 for an ephemeral port).
    #[arg(long, env = "SKALD_LISTEN", default_value = "127.0.0.1:2114")]
    pub listen: SocketAddr,
    /// Also serve KurrentDB's gRPC client protocol on this address (off by
    /// default): applications written for KurrentDB's official clients
    /// connect with `kurrentdb://HOST:PORT?tls=false`. See
    /// `docs/kurrentdb-compat.md`.
    #[arg(long, env = "SKALD_GRPC_LISTEN")]
    pub grpc_listen: Option<SocketAddr>,
    /// The auth file (TOML): the API tokens, as hashes, with their roles and
    /// stream prefixes. Turns access control on; reloaded on SIGHUP. See
    /// `docs/security.md`.
    #[arg(long, env = "SKALD_AUTH_FILE")]
    pub auth_file: Option<PathBuf>,
    /// Serve on a non-loopback address without access control (no
    /// --auth-file): anyone who can reach the port can read, append, delete
    /// and administer.
    #[arg(long, env = "SKALD_INSECURE_NO_AUTH", conflicts_with = "auth_file")]
    pub insecure_no_auth: bool,
    /// The server's certificate chain (PEM); with --tls-key, serves HTTPS only.
    #[arg(long, env = "SKALD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "SKALD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Largest append request body, in bytes.
    #[arg(long, env = "SKALD_MAX_APPEND_BYTES", default_value_t = 16 << 20)]
    pub max_append_bytes: usize,
    /// Largest single event (data plus metadata plus type), in bytes.
    #[arg(long, env = "SKALD_MAX_EVENT_BYTES", default_value_t = 1 << 20)]
    pub max_event_bytes: usize,
    /// Largest custom stream metadata (the JSON object's text), in bytes.
    #[arg(long, env = "SKALD_MAX_CUSTOM_METADATA_BYTES", default_value_t = 64 << 10)]
    pub max_custom_metadata_bytes: usize,
    /// How long a client may take to send a request body, in seconds.
    #[arg(long, env = "SKALD_BODY_TIMEOUT_SECS", default_value_t = 30)]
    pub body_timeout_secs: u64,
    /// Directory that `POST /admin/backup` writes backups into (one
    /// subdirectory each); backups are off without it.
    #[arg(long, env = "SKALD_BACKUP_DIR")]
    pub backup_dir: Option<PathBuf>,
    /// Most connections open at once; more are answered 503 and closed. Each
    /// needs a file descriptor: see `docs/operations.md`.
    #[arg(long, env = "SKALD_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// How long a new connection may take to send a complete request head, and
    /// a keep-alive one from the first byte of its next head, in seconds.
    #[arg(long, env = "SKALD_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    pub header_timeout_secs: u64,
    /// How long a keep-alive connection may sit idle between two requests, in
    /// seconds.
    #[arg(long, env = "SKALD_IDLE_TIMEOUT_SECS", default_value_t = 60)]
    pub idle_timeout_secs: u64,
    /// How long a response (a page, a subscription's stream) may wait on a
    /// client that reads none of it before the connection is closed, in
    /// seconds.
    #[arg(long, env = "SKALD_WRITE_STALL_TIMEOUT_SECS", default_value_t = 60)]
    pub write_stall_timeout_secs: u64,
    /// How long graceful shutdown waits for in-flight requests, in seconds.
    #[arg(long, env = "SKALD_SHUTDOWN_TIMEOUT_SECS", default_value_t = 30)]
    pub shutdown_timeout_secs: u64,
    /// Threads of the async runtime (HTTP and gRPC requests, subscriptions,
    /// cluster tasks); default: one per CPU. Fewer leave the writer thread a
    /// CPU of its own (docs/operations.md).
    #[arg(long, env = "SKALD_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,
    /// Most subscriptions open at once; more are answered 503 with Retry-After.
    #[arg(long, env = "SKALD_MAX_SUBSCRIPTIONS", default_value_t = 1024)]
    pub max_subscriptions: usize,
    /// Most long-polls (reads with `wait_ms`) at once; more are answered 503
    /// with Retry-After.
    #[arg(long, env = "SKALD_MAX_LONG_POLLS", default_value_t = 1024)]
    pub max_long_polls: usize,
    /// Most write requests queued for (or being committed by) the writer.
    #[arg(long, env = "SKALD_WRITER_QUEUE_REQUESTS", default_value_t = 8192)]
    pub writer_queue_requests: usize,
    /// Most payload bytes queued for (or being committed by) the writer.
    #[arg(long, env = "SKALD_WRITER_QUEUE_BYTES", default_value_t = 128 << 20)]
    pub writer_queue_bytes: usize,
    /// How long a write waits for a place in a full queue before it is
    /// answered 503 writer_busy, in milliseconds.
    #[arg(long, env = "SKALD_WRITER_QUEUE_TIMEOUT_MS", default_value_t = 5000)]
    pub writer_queue_timeout_ms: u64,
    /// How long the writer may spin on its empty queue, in microseconds,
    /// when one client's appends come back to back and nothing else is being
    /// appended (saves the wake-up of a sleeping writer on each append). 0
    /// turns it off. See `docs/operations.md`.
    #[arg(long, env = "SKALD_WRITER_SPIN_US", default_value_t = 400,
          value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub writer_spin_us: u64,
    /// Most memory of the event-id filter, in MiB (about 2 to 4 bytes per
    /// stored event id until it is full; past that, more appends look their
    /// ids up on disk). 0 turns it off. See `docs/operations.md`.
    #[arg(long, env = "SKALD_ID_FILTER_MIB", default_value_t = crate::storage::DEFAULT_FILTER_MIB)]
    pub id_filter_mib: usize,
    /// Cluster mode: NATS servers with JetStream, comma-separated
    /// (`nats://h1:4222,nats://h2:4222`). Writes then go through the
    /// replicated log (see docs/replication.md); without it Skald is one node.
    #[arg(long, env = "SKALD_CLUSTER", value_delimiter = ',')]
    pub cluster: Vec<String>,
    /// Cluster mode: the JetStream stream holding the log.
    #[arg(long, env = "SKALD_CLUSTER_STREAM", default_value = "SKALD")]
    pub cluster_stream: String,
    /// Cluster mode: JetStream servers holding a copy of the log.
    #[arg(long, env = "SKALD_CLUSTER_REPLICAS", default_value_t = 3)]
    pub cluster_replicas: usize,
    /// Cluster mode: how long a write waits for the log's acknowledgement
    /// and for this node to apply it (503 `cluster_unavailable` after that).
    #[arg(long, env = "SKALD_CLUSTER_PUBLISH_TIMEOUT_MS", default_value_t = 5000)]
    pub cluster_publish_timeout_ms: u64,
    /// Cluster mode: `/health/ready` answers 503 while this node is more than
    /// this many log messages behind.
    #[arg(long, env = "SKALD_CLUSTER_READY_LAG", default_value_t = 1000)]
    pub cluster_ready_lag: u64,
    /// Cluster mode: the NATS user (with --cluster-password).
    #[arg(long, env = "SKALD_CLUSTER_USER", requires = "cluster_password")]
    pub cluster_user: Option<String>,
    /// Cluster mode: the NATS user's password (better from the environment
    /// than on the command line, where `ps` shows it).
    #[arg(
        long,
        env = "SKALD_CLUSTER_PASSWORD",
        requires = "cluster_user",
        hide_env_values = true
    )]
    pub cluster_password: Option<String>,
    /// Cluster mode: a NATS token (instead of a user and password).
    #[arg(
        long,
        env = "SKALD_CLUSTER_TOKEN",
        conflicts_with = "cluster_user",
        hide_env_values = true
    )]
    pub cluster_token: Option<String>,
    /// Cluster mode: PEM root certificates the NATS servers' TLS certificates
    /// must chain to; TLS is then required (`tls://` or `nats://` URLs alike).
    #[arg(long, env = "SKALD_CLUSTER_CA")]
    pub cluster_ca: Option<PathBuf>,
}

/// Why the flags were refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--max-event-bytes ({event}) must be between 1 and --max-append-bytes ({append})")]
    EventLimit { event: usize, append: usize },
    #[error("--max-append-bytes must be between 1 and 1 GiB, got {0}")]
    AppendLimit(usize),
    #[error("--max-custom-metadata-bytes must be between 2 and 16 MiB, got {0}")]
    CustomMetadataLimit(usize),
    #[error(
        "refusing to listen on {0} without access control: anyone who can reach it could read every stream, append, delete streams for good and run admin jobs. Turn access control on with --auth-file (tokens from `skald token new`), listen on a loopback address (127.0.0.1) behind an authenticating proxy, or pass --insecure-no-auth to accept that (see docs/security.md)"
    )]
    ExposedWithoutAuth(SocketAddr),
    #[error("--max-connections must be at least 1")]
    MaxConnections,
    #[error("--header-timeout-secs, --idle-timeout-secs and --write-stall-timeout-secs must be between 1 and 3600")]
    ConnectionTimeouts,
    #[error("--writer-queue-requests must be at least 1 and --writer-queue-bytes at least 1024")]
    WriterQueue,
    #[error("--cluster-stream must be 1 to 32 letters, digits, '-' or '_', and --cluster-replicas 1 to 5")]
    Cluster,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub auth_file: Option<PathBuf>,
    /// `(certificate chain, private key)` PEM files.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub backup_dir: Option<PathBuf>,
    pub listen: SocketAddr,
    /// Where the KurrentDB-compatible gRPC front end listens, when it is on.
    pub grpc_listen: Option<SocketAddr>,
    pub max_append_bytes: usize,
    pub max_event_bytes: usize,
    pub max_custom_metadata_bytes: usize,
    pub shutdown_timeout: Duration,
    pub body_timeout: Duration,
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub write_stall_timeout: Duration,
    pub max_subscriptions: usize,
    pub max_long_polls: usize,
    pub writer_queue_requests: usize,
    /// `--writer-queue-bytes` in KiB (rounded up).
    pub writer_queue_kib: usize,
    pub writer_queue_timeout: Duration,
    /// `--writer-spin-us`.
    pub writer_spin: Duration,
    pub id_filter_mib: usize,
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

impl ServeArgs {
    /// The async runtime's worker threads: `--worker-threads`, or one per CPU
    /// this process may use (tokio's default). Fewer workers than CPUs leave
    /// the writer thread a CPU of its own: on 2 CPUs one worker served 5-10%
    /// more single-event appends than two, but fanned commits out to 100
    /// subscribers 13% slower (docs/benchmarks.md), so the default stays.
    pub fn worker_threads(&self) -> usize {
        self.worker_threads.map_or_else(
            || std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            usize::from,
        )
    }

    /// Checks the flags against each other.
    pub fn validate(self) -> Result<Config, ConfigError> {
        if self.max_append_bytes == 0 || self.max_append_bytes > 1 << 30 {
            return Err(ConfigError::AppendLimit(self.max_append_bytes));
        }
        if !self.listen.ip().is_loopback() && !self.insecure_no_auth && self.auth_file.is_none() {
            return Err(ConfigError::ExposedWithoutAuth(self.listen));
        }
        if let Some(grpc) = self.grpc_listen {
            if !grpc.ip().is_loopback() && !self.insecure_no_auth && self.auth_file.is_none() {
                return Err(ConfigError::ExposedWithoutAuth(grpc));
            }
        }
        if self.max_connections == 0 {
            return Err(ConfigError::MaxConnections);
        }
        let timeouts = 1..=3600;
        if !timeouts.contains(&self.header_timeout_secs)
            || !timeouts.contains(&self.idle_timeout_secs)
            || !timeouts.contains(&self.write_stall_timeout_secs)
        {
            return Err(ConfigError::ConnectionTimeouts);
        }
        if !(2..=16 << 20).contains(&self.max_custom_metadata_bytes) {
            return Err(ConfigError::CustomMetadataLimit(
                self.max_custom_metadata_bytes,
            ));
        }
        if self.writer_queue_requests == 0 || self.writer_queue_bytes < 1024 {
            return Err(ConfigError::WriterQueue);
        }
        if self.max_event_bytes == 0 || self.max_event_bytes > self.max_append_bytes {
            return Err(ConfigError::EventLimit {
                event: self.max_event_bytes,
                append: self.max_append_bytes,
            });
        }
        let cluster = if self.cluster.is_empty() {
            None
        } else {
            let name_ok = (1..=32).contains(&self.cluster_stream.len())
                && self
                    .cluster_stream
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !name_ok || !(1..=5).contains(&self.cluster_replicas) {
                return Err(ConfigError::Cluster);
            }
            Some(crate::cluster::ClusterConfig {
                servers: self.cluster,
                stream: self.cluster_stream,
                replicas: self.cluster_replicas,
                publish_timeout: Duration::from_millis(self.cluster_publish_timeout_ms.max(1)),
                ready_lag: self.cluster_ready_lag,
                auth: match (self.cluster_user, self.cluster_password, self.cluster_token) {
                    (Some(user), Some(password), _) => crate::cluster::ClusterAuth::UserPassword {
                        user,
                        password: crate::cluster::Secret(password),
                    },
                    (_, _, Some(token)) => {
                        crate::cluster::ClusterAuth::Token(crate::cluster::Secret(token))
                    }
                    _ => crate::cluster::ClusterAuth::None,
                },
                ca: self.cluster_ca,
            })
        };
        Ok(Config {
            cluster,
            data_dir: self.data_dir,
            auth_file: self.auth_file,
            tls: self.tls_cert.zip(self.tls_key),
            backup_dir: self.backup_dir,
            listen: self.listen,
            grpc_listen: self.grpc_listen,
            max_append_bytes: self.max_append_bytes,
            max_event_bytes: self.max_event_bytes,
            max_custom_metadata_bytes: self.max_custom_metadata_bytes,
            shutdown_timeout: Duration::from_secs(self.shutdown_timeout_secs),
            body_timeout: Duration::from_secs(self.body_timeout_secs.max(1)),
            max_connections: self.max_connections,
            header_timeout: Duration::from_secs(self.header_timeout_secs),
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            write_stall_timeout: Duration::from_secs(self.write_stall_timeout_secs),
            max_subscriptions: self.max_subscriptions,
            max_long_polls: self.max_long_polls,
            writer_queue_requests: self.writer_queue_requests,
            writer_queue_kib: self.writer_queue_bytes.div_ceil(1024),
            writer_queue_timeout: Duration::from_millis(self.writer_queue_timeout_ms),
            writer_spin: Duration::from_micros(self.writer_spin_us),
            id_filter_mib: self.id_filter_mib,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn config(args: &[&str]) -> Result<Config, ConfigError> {
        let args = std::iter::once("skald").chain(args.iter().copied());
        Cli::try_parse_from(args)
            .expect("flags parse")
            .serve
            .validate()
    }

    #[test]
    fn exposure_without_auth_needs_the_insecure_flag() {
        assert!(matches!(
            config(&["--listen", "0.0.0.0:2114"]),
            Err(ConfigError::ExposedWithoutAuth(_))
        ));
        let exposed = config(&["--listen", "0.0.0.0:2114", "--insecure-no-auth"]);
        assert_eq!(
            exposed.expect("accepted").listen.to_string(),
            "0.0.0.0:2114"
        );
        assert!(config(&["--listen", "127.0.0.1:2114"]).is_ok());
        assert!(matches!(
            config(&["--grpc-listen", "0.0.0.0:2113"]),
            Err(ConfigError::ExposedWithoutAuth(_))
        ));
        let grpc_with_auth = config(&["--grpc-listen", "0.0.0.0:2113", "--auth-file", "auth.toml"]);
        assert!(grpc_with_auth.is_ok());
        assert!(config(&["--grpc-listen", "127.0.0.1:2113"]).is_ok());
        assert!(config(&["--listen", "[::1]:2114"]).is_ok());
        let with_auth = config(&["--listen", "0.0.0.0:2114", "--auth-file", "auth.toml"]);
        assert!(with_auth.expect("accepted").auth_file.is_some());
    }
}
