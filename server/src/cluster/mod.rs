//! Cluster mode (`--cluster`): NATS JetStream holds the one replicated,
//! ordered write log, and this node is a projection of it.
//!
//! A client's write is checked against this node's store (`Origin::Check`),
//! then published to the JetStream stream on its Skald stream's subject with
//! `Nats-Expected-Last-Subject-Sequence` set to the log sequence that last
//! wrote that subject here: JetStream refuses it if any node wrote the stream
//! since, and the node catches up and checks again. The applier consumes the
//! log in order from the store's applied sequence and hands every message to
//! the single writer (`Origin::Log`), which applies it with the usual rules
//! and records the sequence in the same batch. A published write is answered
//! once this node has applied it, with the outcome the writer gave it, so
//! every node computes the same positions and a client reads its own writes.
//! See docs/replication.md.

pub mod entry;
pub mod registry;

use entry::Entry;
use registry::{Registry, RegistryBucket, RegistryError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, context::PublishErrorKind, stream};
use bytes::Bytes;
use futures::future::Either;
use futures::stream::{FuturesOrdered, StreamExt};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::model::StreamName;
use crate::service::Service;
use crate::storage::writer::{WriteError, WriteOp, WriteOutcome};

/// Log messages handed to the writer and not yet answered, at most.
const MAX_APPLYING: usize = 1024;
/// How often one write is checked and published again after another node
/// changed its stream first.
const MAX_ATTEMPTS: usize = 32;
/// How long a write pauses before publishing again when no server answered.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// How long the applier waits for a message before asking whether the log
/// moved on without it (its consumer may be lost with a JetStream server).
const QUIET_CHECK: Duration = Duration::from_secs(2);
/// The subject token of the scavenge ends: not base64url, so no stream's.
const SCAVENGED_TOKEN: &str = "$scavenged";
/// How long a new node waits for JetStream to elect its leaders on start.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The cluster settings (`--cluster*` flags).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// NATS server URLs.
    pub servers: Vec<String>,
    /// The JetStream stream holding the log.
    pub stream: String,
    /// Its replicas (JetStream servers holding a copy).
    pub replicas: usize,
    /// How long a write may wait for JetStream and for this node to apply it.
    pub publish_timeout: Duration,
    /// Above this many unapplied messages the node is not ready.
    pub ready_lag: u64,
    /// How this node authenticates to NATS.
    pub auth: ClusterAuth,
    /// Root certificates for the servers' TLS (TLS required when set).
    pub ca: Option<std::path::PathBuf>,
}

/// How a node authenticates to the NATS servers.
#[derive(Debug, Clone, Default)]
pub enum ClusterAuth {
    #[default]
    None,
    UserPassword {
        user: String,
        password: Secret,
    },
    Token(Secret),
}

/// A credential, kept out of `Debug` output (and so out of logs).
#[derive(Clone)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Why cluster mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot connect to NATS at {servers}: {message}")]
    Connect { servers: String, message: String },
    #[error("JetStream stream {stream}: {message}")]
    Stream { stream: String, message: String },
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(
        "this node applied the log up to {applied}, but JetStream may have purged messages \
         up to {horizon} after a scavenge: restore a backup of another node into this data \
         directory (`skald restore`, docs/replication.md)"
    )]
    Compacted { applied: u64, horizon: u64 },
    #[error("this node's id in {path}: {message}")]
    NodeId { path: String, message: String },
}

/// The file in the data directory holding a node's id in the cluster's
/// registry. Not part of the store, so a backup restored elsewhere does not
/// carry it: the restored node registers as a node of its own.
pub const NODE_ID_FILE: &str = "skald-node-id";

/// This node's id: read from the data directory, or made (and synced) on
/// the first start in cluster mode.
pub fn node_id(data_dir: &std::path::Path) -> Result<String, ClusterError> {
    let path = data_dir.join(NODE_ID_FILE);
    let error = |e: std::io::Error| ClusterError::NodeId {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(error(e)),
    }
    let id = uuid::Uuid::new_v4().to_string();
    let temporary = data_dir.join(format!("{NODE_ID_FILE}.tmp"));
    let mut file = std::fs::File::create(&temporary).map_err(error)?;
    std::io::Write::write_all(&mut file, id.as_bytes()).map_err(error)?;
    file.sync_all().map_err(error)?;
    std::fs::rename(&temporary, &path).map_err(error)?;
    std::fs::File::open(data_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(error)?;
    Ok(id)
}

type Answer = Result<WriteOutcome, WriteError>;
/// The writes waiting for one message: (token, where its answer goes).
type Waiting = Vec<(u64, oneshot::Sender<Answer>)>;

/// This node's link to the cluster's log.
pub struct Cluster {
    config: ClusterConfig,
    client: async_nats::Client,
    js: jetstream::Context,
    /// The last log sequence this node has applied.
    applied: watch::Receiver<u64>,
    /// The last log sequence its store has applied (a scavenge end writes
    /// nothing, so it may be behind `applied`): what this node reports to
    /// the registry.
    stored: AtomicU64,
    applied_tx: Mutex<Option<watch::Sender<u64>>>,
    /// The log's last sequence as this node last heard it (from the pending
    /// count of the last message received, or from JetStream on start).
    log_head: AtomicU64,
    /// Set once the node stopped applying the log.
    stopped: std::sync::atomic::AtomicBool,
    /// Writes published by this node and waiting for their outcome, by
    /// message id (a retry on the same node may wait on the same id).
    waiters: Mutex<HashMap<String, Waiting>>,
    next_waiter: AtomicU64,
    /// The log sequence of the last scavenge end applied here.
    scavenged: watch::Sender<u64>,
    /// This node's id in the registry.
    node_id: String,
    /// The cluster's registry of nodes and the purge horizon.
    registry: RegistryBucket,
}

impl Cluster {
    /// Connects, creates the log's stream or checks the existing one,
    /// registers node `node_id` (refused when JetStream may have purged
    /// messages it still needs), and returns the cluster link; `applied` is
    /// the store's applied sequence.
    pub async fn connect(
        config: ClusterConfig,
        applied: u64,
        node_id: String,
    ) -> Result<Arc<Self>, ClusterError> {
        let servers = config.servers.join(",");
        let connect_error = |message: String| ClusterError::Connect {
            servers: servers.clone(),
            message,
        };
        let addresses = config
            .servers
            .iter()
            .map(|s| s.parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| connect_error(e.to_string()))?;
        // The servers' refusals, so a start with wrong credentials fails
        // with that instead of waiting for JetStream until it gives up.
        let refused: Arc<Mutex<Option<String>>> = Arc::default();
        let seen = Arc::clone(&refused);
        let mut options = async_nats::ConnectOptions::new()
            .name("skald")
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            // A server cut off by the network is noticed within seconds
            // (two unanswered pings), and the client moves to another.
            .ping_interval(Duration::from_secs(2))
            .event_callback(move |event| {
                let seen = Arc::clone(&seen);
                async move {
                    // A refused login comes as a server error once connected,
                    // as a client error ("authorization violation") while
                    // connecting.
                    let refusal = match event {
                        async_nats::Event::ServerError(
                            e @ async_nats::ServerError::AuthorizationViolation,
                        ) => Some(e.to_string()),
                        async_nats::Event::ClientError(async_nats::ClientError::Other(e))
                            if e.contains("authorization violation") =>
                        {
                            Some(e)
                        }
                        _ => None,
                    };
                    if let Some(refusal) = refusal {
                        *seen.lock().expect("lock") = Some(refusal);
                    }
                }
            });
        options = match &config.auth {
            ClusterAuth::None => options,
            ClusterAuth::UserPassword { user, password } => {
                options.user_and_password(user.clone(), password.0.clone())
            }
            ClusterAuth::Token(token) => options.token(token.0.clone()),
        };
        if let Some(ca) = &config.ca {
            // The NATS client builds its TLS on the process's default
            // provider, which the build cannot pick (more than one crate
            // feature is on): ours, as for the HTTPS front end. An error
            // means one is installed already.
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        let client = options
            .connect(addresses)
            .await
            .map_err(|e| connect_error(e.to_string()))?;
        let check_refused = || -> Result<(), ClusterError> {
            match refused.lock().expect("lock").take() {
                Some(refusal) => Err(connect_error(format!(
                    "{refusal}: check --cluster-user/--cluster-password or --cluster-token"
                ))),
                None => Ok(()),
            }
        };
        let mut js = jetstream::new(client.clone());
        js.set_timeout(config.publish_timeout);
        let stream_error = |message: String| ClusterError::Stream {
            stream: config.stream.clone(),
            message,
        };
        let wanted = stream::Config {
            name: config.stream.clone(),
            subjects: vec![format!("{}.s.>", config.stream)],
            storage: stream::StorageType::File,
            num_replicas: config.replicas,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        };
        // Right after the servers start, JetStream may have no leader yet.
        let deadline = Instant::now() + START_TIMEOUT;
        let info = loop {
            check_refused()?;
            match js.get_or_create_stream(wanted.clone()).await {
                Ok(mut stream) => match stream.info().await {
                    Ok(info) => break info.clone(),
                    Err(e) if Instant::now() < deadline => {
                        tracing::info!(error = %e, "waiting for JetStream");
                    }
                    Err(e) => return Err(stream_error(e.to_string())),
                },
                Err(e) if Instant::now() < deadline => {
                    tracing::info!(error = %e, "waiting for JetStream");
                }
                Err(e) => return Err(stream_error(e.to_string())),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let have = &info.config;
        if have.subjects != wanted.subjects
            // JetStream stores 0 replicas as 1.
            || have.num_replicas != wanted.num_replicas.max(1)
            || have.storage != stream::StorageType::File
        {
            return Err(stream_error(format!(
                "exists with subjects {:?}, {} replicas, {:?} storage; this node wants {:?}, {}, file",
                have.subjects, have.num_replicas, have.storage, wanted.subjects, wanted.num_replicas
            )));
        }
        let log_last = info.state.last_sequence;
        if applied > log_last {
            return Err(stream_error(format!(
                "holds sequences up to {log_last}, but this node's store has applied {applied}: \
                 it belongs to another log"
            )));
        }
        let registry = loop {
            match RegistryBucket::open(&js, &config.stream, config.replicas).await {
                Ok(registry) => break registry,
                Err(e) if Instant::now() < deadline => {
                    tracing::info!(error = %e, "waiting for JetStream");
                }
                Err(e) => return Err(e.into()),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        // A bucket just created may have no leader yet either.
        let joined = loop {
            let registered = registry
                .change(|r| {
                    if !r.can_catch_up(applied) {
                        return Err(r.horizon);
                    }
                    r.report(&node_id, applied);
                    Ok(())
                })
                .await;
            match registered {
                Ok((joined, _)) => break joined,
                Err(e) if Instant::now() < deadline => {
                    tracing::info!(error = %e, "waiting for JetStream");
                }
                Err(e) => return Err(e.into()),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        if let Err(horizon) = joined {
            return Err(ClusterError::Compacted { applied, horizon });
        }
        tracing::info!(
            stream = %config.stream,
            replicas = have.num_replicas,
            applied,
            log_last,
            node_id,
            "cluster log ready"
        );
        let (applied_tx, applied_rx) = watch::channel(applied);
        Ok(Arc::new(Self {
            config,
            client,
            js,
            applied: applied_rx,
            stored: AtomicU64::new(applied),
            applied_tx: Mutex::new(Some(applied_tx)),
            log_head: AtomicU64::new(log_last),
            stopped: std::sync::atomic::AtomicBool::new(false),
            waiters: Mutex::new(HashMap::new()),
            next_waiter: AtomicU64::new(0),
            scavenged: watch::Sender::new(0),
            node_id,
            registry,
        }))
    }

    /// The last log sequence applied here.
    pub fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Log messages not applied here yet, as far as this node knows the log.
    pub fn lag(&self) -> u64 {
        self.log_head
            .load(Ordering::Relaxed)
            .saturating_sub(self.applied())
    }

    /// Whether this node stopped applying the log (a damaged message or a
    /// failed write; it needs a restart).
    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    /// Whether this node is close enough to the log's head to serve reads
    /// (and still applying it).
    pub fn ready(&self) -> bool {
        !self.stopped() && self.lag() <= self.config.ready_lag
    }

    /// Starts applying the log to `service`'s store, as one of its tasks.
    pub fn start_applier(self: &Arc<Self>, service: &Arc<Service>) {
        let Some(applied_tx) = self.applied_tx.lock().expect("lock").take() else {
            return;
        };
        let cluster = Arc::clone(self);
        let task_service = Arc::clone(service);
        service.spawn(async move { cluster.apply(task_service, applied_tx).await });
        let cluster = Arc::clone(self);
        let task_service = Arc::clone(service);
        service.spawn(async move { cluster.purge_after_scavenges(task_service).await });
    }

    /// This node's id in the cluster's registry.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The cluster's registry as JetStream holds it now.
    pub async fn registry(&self) -> Result<Registry, RegistryError> {
        self.registry.read().await
    }

    /// Forgets node `id` (gone for good), so the purge horizon no longer
    /// waits for it, and purges what that allows; returns whether it was
    /// registered.
    pub async fn forget(&self, service: &Service, id: &str) -> Result<bool, String> {
        let (known, registry) = self
            .registry
            .change(|r| r.forget(id))
            .await
            .map_err(|e| e.to_string())?;
        self.purge_below_horizon(service, registry).await?;
        Ok(known)
    }

    /// At each scavenge end this node applies: reports how far its store
    /// applied the log (every removal of the scavenge, at least), and, when
    /// that moved the horizon (every node has applied that far), purges the
    /// messages holding only removed events from JetStream.
    async fn purge_after_scavenges(self: Arc<Self>, service: Arc<Service>) {
        let mut ends = self.scavenged.subscribe();
        let shutdown = service.shutdown_token().clone();
        loop {
            tokio::select! {
                changed = ends.changed() => if changed.is_err() { return },
                () = shutdown.cancelled() => return,
            }
            let end = *ends.borrow_and_update();
            let stored = self.stored.load(Ordering::Relaxed);
            let reported = self
                .registry
                .change(|r| r.report(&self.node_id, stored))
                .await;
            let purged = match reported {
                Ok(((), registry)) => self.purge_below_horizon(&service, registry).await,
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = purged {
                tracing::warn!(error = %e, end, "cannot purge scavenged events from JetStream; the next scavenge end tries again");
            }
        }
    }

    /// Purges from JetStream the messages holding only events removed by the
    /// removals logged after the registry's `purged_through` up to its
    /// horizon (never a message after the horizon, which some node may still
    /// need), then records that in the registry.
    async fn purge_below_horizon(
        &self,
        service: &Service,
        registry: Registry,
    ) -> Result<(), String> {
        let (from, to) = (registry.purged_through, registry.horizon);
        if from >= to {
            return Ok(());
        }
        let plan = service
            .purge_plan(from, to)
            .await
            .map_err(|e| e.to_string())?;
        let stream = self
            .js
            .get_stream(&self.config.stream)
            .await
            .map_err(|e| format!("cannot look the log's stream up: {e}"))?;
        let mut purged = 0;
        for purge in &plan {
            let response = stream
                .purge()
                .filter(self.subject(&purge.stream))
                .sequence(purge.before)
                .await
                .map_err(|e| format!("cannot purge {}: {e}", purge.stream))?;
            purged += response.purged;
        }
        self.registry
            .change(|r| r.purged_through = r.purged_through.max(to))
            .await
            .map_err(|e| e.to_string())?;
        service.metrics().replication_purged_messages.inc_by(purged);
        tracing::info!(
            purged,
            streams = plan.len(),
            from,
            to,
            "purged scavenged events from JetStream"
        );
        Ok(())
    }

    /// The JetStream subject of a Skald stream: any stream name (dots, spaces,
    /// wildcards) becomes one subject token.
    fn subject(&self, stream: &StreamName) -> String {
        use base64::Engine as _;
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(stream.as_str());
        format!("{}.s.{token}", self.config.stream)
    }

    /// Publishes a write and answers it once this node applied it: a
    /// client's write under the compare-and-set on its stream, a scavenge's
    /// removal as it is (the writer re-checks it where the log applies it).
    pub async fn write(&self, service: &Service, stream: StreamName, op: WriteOp) -> Answer {
        let payload = Bytes::from(entry::encode(&stream, &op));
        let max = self.client.server_info().max_payload.saturating_sub(1024);
        if payload.len() > max {
            return Err(WriteError::TooLargeForCluster {
                bytes: payload.len(),
                max,
            });
        }
        if matches!(op, WriteOp::Remove { .. }) {
            let id = uuid::Uuid::new_v4().to_string();
            let (sequence, mut waiter) = self.publish(self.subject(&stream), payload, &id).await?;
            let deadline = Instant::now() + self.config.publish_timeout;
            tokio::time::timeout_at(deadline, &mut waiter.answer)
                .await
                .map_err(|_| self.not_applied(sequence))?
                .map_err(|_| WriteError::ClusterUnavailable("the applier stopped".into()))?
        } else {
            self.write_checked(service, stream, op, payload).await
        }
    }

    /// Marks the end of a scavenge in the log (every node compacts when it
    /// applies it) and returns once this node applied it.
    pub async fn scavenged(&self) -> Result<u64, WriteError> {
        let id = uuid::Uuid::new_v4().to_string();
        let subject = format!("{}.s.{SCAVENGED_TOKEN}", self.config.stream);
        let payload = Bytes::from(entry::encode_scavenged());
        let (sequence, _waiter) = self.publish(subject, payload, &id).await?;
        self.wait_applied(sequence, Instant::now() + self.config.publish_timeout)
            .await?;
        Ok(sequence)
    }

    /// The log sequence of the last scavenge end applied here, as it changes.
    pub fn scavenges(&self) -> watch::Receiver<u64> {
        self.scavenged.subscribe()
    }

    /// Publishes a message with no expectation, retrying while no server
    /// answers for the subject, within the publish timeout; returns its
    /// sequence and the waiter for its outcome.
    async fn publish(
        &self,
        subject: String,
        payload: Bytes,
        id: &str,
    ) -> Result<(u64, Waiter<'_>), WriteError> {
        let deadline = Instant::now() + self.config.publish_timeout;
        loop {
            let waiter = self.wait_for(id);
            let publish = jetstream::message::PublishMessage::build()
                .payload(payload.clone())
                .message_id(id);
            let acked = tokio::time::timeout_at(deadline, async {
                self.js.send_publish(subject.clone(), publish).await?.await
            })
            .await
            .map_err(|_| self.timed_out())?;
            match acked {
                Ok(ack) => return Ok((ack.sequence, waiter)),
                Err(e) if e.kind() == PublishErrorKind::StreamNotFound => {
                    tokio::time::timeout_at(deadline, tokio::time::sleep(RETRY_PAUSE))
                        .await
                        .map_err(|_| WriteError::ClusterUnavailable(e.to_string()))?;
                }
                Err(e) => return Err(WriteError::ClusterUnavailable(e.to_string())),
            }
        }
    }

    fn timed_out(&self) -> WriteError {
        WriteError::ClusterUnavailable(format!(
            "no answer within {:?} (--cluster-publish-timeout-ms)",
            self.config.publish_timeout
        ))
    }

    fn not_applied(&self, sequence: u64) -> WriteError {
        WriteError::ClusterUnavailable(format!(
            "this node has not applied the log up to {sequence} in time"
        ))
    }

    /// Publishes a client's write under the compare-and-set on its stream's
    /// subject and answers it once this node applied it.
    async fn write_checked(
        &self,
        service: &Service,
        stream: StreamName,
        op: WriteOp,
        payload: Bytes,
    ) -> Answer {
        let message_id = message_id(&stream, &op);
        let subject = self.subject(&stream);
        let deadline = Instant::now() + self.config.publish_timeout;
        let timed_out = || self.timed_out();
        for _ in 0..MAX_ATTEMPTS {
            let subject_sequence = match service.check(stream.clone(), op.clone()).await? {
                WriteOutcome::Checked { subject_sequence } => subject_sequence,
                answered => return Ok(answered),
            };
            let mut waiter = self.wait_for(&message_id);
            let publish = jetstream::message::PublishMessage::build()
                .payload(payload.clone())
                .message_id(&message_id)
                .expected_last_subject_sequence(subject_sequence);
            let acked = tokio::time::timeout_at(deadline, async {
                self.js.send_publish(subject.clone(), publish).await?.await
            })
            .await
            .map_err(|_| timed_out())?;
            match acked {
                Ok(ack) if !ack.duplicate => {
                    return tokio::time::timeout_at(deadline, &mut waiter.answer)
                        .await
                        .map_err(|_| timed_out())?
                        .map_err(|_| {
                            WriteError::ClusterUnavailable("the applier stopped".into())
                        })?;
                }
                Ok(ack) => {
                    // Another publish of the same ids got there first: once it
                    // is applied, the check answers it as a replay (or refuses).
                    self.wait_applied(ack.sequence, deadline).await?;
                }
                Err(e) if wrong_last_sequence(&e) => {
                    // Another write reached this stream first: catch up and check again.
                    let last = self
                        .log_last_sequence()
                        .await
                        .map_err(WriteError::ClusterUnavailable)?;
                    self.wait_applied(last, deadline).await?;
                }
                Err(e) if e.kind() == PublishErrorKind::StreamNotFound => {
                    // No server answered for the subject yet (just after the
                    // stream was created, or during a leader change): retry.
                    tokio::time::timeout_at(deadline, tokio::time::sleep(RETRY_PAUSE))
                        .await
                        .map_err(|_| WriteError::ClusterUnavailable(e.to_string()))?;
                }
                Err(e) => return Err(WriteError::ClusterUnavailable(e.to_string())),
            }
        }
        Err(WriteError::ClusterUnavailable(format!(
            "the stream changed under {MAX_ATTEMPTS} attempts in a row"
        )))
    }

    /// Registers a waiter for the outcome of the message `id`.
    fn wait_for(&self, id: &str) -> Waiter<'_> {
        let (tx, answer) = oneshot::channel();
        let token = self.next_waiter.fetch_add(1, Ordering::Relaxed);
        self.waiters
            .lock()
            .expect("lock")
            .entry(id.to_owned())
            .or_default()
            .push((token, tx));
        Waiter {
            cluster: self,
            id: id.to_owned(),
            token,
            answer,
        }
    }

    async fn wait_applied(&self, sequence: u64, deadline: Instant) -> Result<(), WriteError> {
        let mut applied = self.applied.clone();
        tokio::time::timeout_at(deadline, applied.wait_for(|a| *a >= sequence))
            .await
            .map_err(|_| self.not_applied(sequence))?
            .map_err(|_| WriteError::ClusterUnavailable("the applier stopped".into()))?;
        Ok(())
    }

    /// The log's last sequence, as JetStream reports it now.
    async fn log_last_sequence(&self) -> Result<u64, String> {
        let stream = self
            .js
            .get_stream(&self.config.stream)
            .await
            .map_err(|e| format!("cannot look the log's stream up: {e}"))?;
        let info = stream
            .get_info()
            .await
            .map_err(|e| format!("cannot read the log's state: {e}"))?;
        Ok(info.state.last_sequence)
    }

    /// Applies the log from the store's applied sequence on, for as long as
    /// the server runs; reconnects after errors.
    async fn apply(self: Arc<Self>, service: Arc<Service>, applied: watch::Sender<u64>) {
        let shutdown = service.shutdown_token().clone();
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.apply_from(&service, &applied, &shutdown).await {
                Ok(()) => return,
                Err(Stop::Fatal(message)) => {
                    tracing::error!(error = %message, "cannot apply the cluster's log; this node stops applying it (restart it)");
                    self.stopped.store(true, Ordering::Relaxed);
                    service.metrics().replication_stopped.set(1);
                    return;
                }
                Err(Stop::Retry(message)) => {
                    tracing::warn!(error = %message, retry_in = ?backoff, "reading the cluster's log failed");
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn apply_from(
        &self,
        service: &Service,
        applied: &watch::Sender<u64>,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Result<(), Stop> {
        let from = *applied.borrow() + 1;
        let retry = |e: &dyn std::fmt::Display| Stop::Retry(e.to_string());
        let stream = self
            .js
            .get_stream(&self.config.stream)
            .await
            .map_err(|e| retry(&e))?;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: format!("{}.s.>", self.config.stream),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: from,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| retry(&e))?;
        let mut messages = consumer.messages().await.map_err(|e| retry(&e))?;
        let mut applying = FuturesOrdered::new();
        let mut result = Ok(());
        loop {
            tokio::select! {
                biased;
                Some((sequence, id, answer)) = applying.next(), if !applying.is_empty() => {
                    if let Err(stop) = self.applied_one(applied, sequence, id, answer) {
                        result = Err(stop);
                        break;
                    }
                }
                () = shutdown.cancelled() => break,
                message = tokio::time::timeout(QUIET_CHECK, messages.next()), if applying.len() < MAX_APPLYING => {
                    let message = match message {
                        Err(_quiet) => {
                            // Nothing for a while: fine if the log has nothing
                            // new, else the consumer is lost: read again.
                            let handed = *applied.borrow() + applying.len() as u64;
                            match self.log_last_sequence().await {
                                Ok(last) if last <= handed => {
                                    self.log_head.fetch_max(last, Ordering::Relaxed);
                                    continue;
                                }
                                Ok(last) => {
                                    result = Err(Stop::Retry(format!("the log is at {last} but its consumer delivered nothing past {handed}")));
                                    break;
                                }
                                Err(e) => {
                                    result = Err(Stop::Retry(e));
                                    break;
                                }
                            }
                        }
                        Ok(Some(Ok(message))) => message,
                        Ok(Some(Err(e))) => {
                            result = Err(retry(&e));
                            break;
                        }
                        Ok(None) => {
                            result = Err(Stop::Retry("the log's consumer ended".into()));
                            break;
                        }
                    };
                    let (sequence, published_micros, pending) = match message.info() {
                        Ok(info) => (
                            info.stream_sequence,
                            u64::try_from(info.published.unix_timestamp_nanos() / 1000).unwrap_or(0),
                            info.pending,
                        ),
                        Err(e) => {
                            result = Err(retry(&e));
                            break;
                        }
                    };
                    self.log_head.fetch_max(sequence + pending, Ordering::Relaxed);
                    let id = message
                        .headers
                        .as_ref()
                        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                        .map(|v| v.as_str().to_owned());
                    match entry::decode(&message.payload) {
                        Ok(Entry::Write(stream, op)) => {
                            let answer = service.apply_log(stream, op, sequence, published_micros);
                            applying.push_back(Either::Left(async move {
                                (sequence, id, Some(answer.await))
                            }));
                        }
                        // Nothing to write: it takes its turn after what the
                        // writer has, and the store's applied sequence moves
                        // with the next write (a restart may see it again,
                        // which costs one more compaction).
                        Ok(Entry::Scavenged) => {
                            applying.push_back(Either::Right(std::future::ready((sequence, id, None))));
                        }
                        Err(e) => {
                            result = Err(Stop::Fatal(format!("log message {sequence}: {e}")));
                            break;
                        }
                    }
                }
            }
        }
        // Whatever stops this pass, the messages already handed to the writer
        // are applied (or not) there: account for them before reading again,
        // so none is applied twice.
        while let Some((sequence, id, answer)) = applying.next().await {
            if let Err(stop) = self.applied_one(applied, sequence, id, answer) {
                result = Err(stop);
            }
        }
        result
    }

    /// Records the writer's answer to the log message `sequence` (`None`:
    /// the end of a scavenge) and hands it to the write waiting for it here,
    /// if any.
    fn applied_one(
        &self,
        applied: &watch::Sender<u64>,
        sequence: u64,
        id: Option<String>,
        answer: Option<Result<Answer, WriteError>>,
    ) -> Result<(), Stop> {
        let Some(answer) = answer else {
            applied.send_replace(sequence);
            self.log_head.fetch_max(sequence, Ordering::Relaxed);
            self.scavenged.send_replace(sequence);
            return Ok(());
        };
        let answer = answer.and_then(|a| match a {
            // Not applied: the store stopped; the log stays where it was.
            Err(e @ (WriteError::Storage(_) | WriteError::WriterStopped | WriteError::Busy)) => {
                Err(e)
            }
            applied => Ok(applied),
        });
        let answer = match answer {
            Ok(answer) => answer,
            Err(e) => return Err(Stop::Fatal(format!("log message {sequence}: {e}"))),
        };
        applied.send_replace(sequence);
        self.stored.store(sequence, Ordering::Relaxed);
        self.log_head.fetch_max(sequence, Ordering::Relaxed);
        let waiting = id.and_then(|id| self.waiters.lock().expect("lock").remove(&id));
        if let Some(waiting) = waiting {
            for (_, tx) in waiting {
                let _ = tx.send(copy_answer(&answer));
            }
        }
        Ok(())
    }
}

/// Whether JetStream refused a publish for its expected last subject
/// sequence (error code 10071, or 10164 on servers since 2.11).
fn wrong_last_sequence(e: &jetstream::context::PublishError) -> bool {
    if e.kind() == PublishErrorKind::WrongLastSequence {
        return true;
    }
    std::error::Error::source(e)
        .and_then(|source| source.downcast_ref::<jetstream::Error>())
        .is_some_and(|error| {
            matches!(
                error.error_code(),
                jetstream::ErrorCode::STREAM_WRONG_LAST_SEQUENCE
                    | jetstream::ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT
            )
        })
}

/// Why a pass over the log stopped.
enum Stop {
    /// Reading the log failed: read again from the applied sequence.
    Retry(String),
    /// The store cannot apply the log (or a message is damaged): stop.
    Fatal(String),
}

/// A write waiting for its message to be applied; unregisters on drop.
struct Waiter<'a> {
    cluster: &'a Cluster,
    id: String,
    token: u64,
    answer: oneshot::Receiver<Answer>,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let mut waiters = self.cluster.waiters.lock().expect("lock");
        if let Some(list) = waiters.get_mut(&self.id) {
            list.retain(|(token, _)| *token != self.token);
            if list.is_empty() {
                waiters.remove(&self.id);
            }
        }
    }
}

/// The JetStream message id of a write: for an append, derived from its
/// stream and event ids, so a retry (through any node, within JetStream's
/// duplicate window) is recognised as the same message; otherwise unique.
fn message_id(stream: &StreamName, op: &WriteOp) -> String {
    use sha2::Digest as _;
    match op {
        WriteOp::Append { events, .. } if !events.is_empty() => {
            let mut hash = sha2::Sha256::new();
            hash.update(stream.as_str().as_bytes());
            hash.update([0]);
            for event in events {
                hash.update(event.id.as_bytes());
            }
            let digest = hash.finalize();
            digest[..16].iter().map(|b| format!("{b:02x}")).collect()
        }
        _ => uuid::Uuid::new_v4().to_string(),
    }
}

/// The same answer for a second waiter of one message.
fn copy_answer(answer: &Answer) -> Answer {
    match answer {
        Ok(outcome) => Ok(outcome.clone()),
        Err(WriteError::WrongExpectedRevision { expected, actual }) => {
            Err(WriteError::WrongExpectedRevision {
                expected: *expected,
                actual: *actual,
            })
        }
        Err(WriteError::DuplicateEventId { id, position }) => Err(WriteError::DuplicateEventId {
            id: *id,
            position: *position,
        }),
        Err(WriteError::StreamDeleted(s)) => Err(WriteError::StreamDeleted(s.clone())),
        Err(WriteError::StreamNotFound(s)) => Err(WriteError::StreamNotFound(s.clone())),
        Err(other) => Err(WriteError::ClusterUnavailable(other.to_string())),
    }
}
