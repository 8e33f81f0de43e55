//! Binding the listener, serving HTTP(S), reloading the auth file and the
//! certificate on SIGHUP, and shutting down gracefully: stop accepting, let
//! in-flight requests finish (long-polls end early), drain the writer so every
//! acknowledged append is on disk, flush, return.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{AuthFileError, Authenticator};
use crate::config::Config;
use crate::connections::ConnectionLimits;
use crate::maintenance::{Jobs, Maintenance};
use crate::metrics::Metrics;
use crate::model::JobKind;
use crate::service::{QueueLimits, Service};
use crate::storage::{StorageError, Store, StoreOptions};
use crate::tls::{Tls, TlsError};

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot open the store in {path}: {source}")]
    Open { path: String, source: StorageError },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("storage failure: {0}")]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Auth(#[from] AuthFileError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
}

/// A bound, not yet serving, server.
pub struct Server {
    config: Config,
    listener: TcpListener,
    grpc_listener: Option<TcpListener>,
    service: Arc<Service>,
    writer_thread: std::thread::JoinHandle<()>,
    shutdown: CancellationToken,
    auth: Option<Arc<Authenticator>>,
    tls: Option<Arc<Tls>>,
}

impl Server {
    /// Opens the store, starts the writer and binds the listener.
    pub async fn bind(config: Config) -> Result<Self, ServerError> {
        // The cheap checks first: a bad auth file or certificate fails at once.
        let auth = config
            .auth_file
            .as_deref()
            .map(Authenticator::open)
            .transpose()?
            .map(Arc::new);
        let tls = config
            .tls
            .as_ref()
            .map(|(cert, key)| Tls::open(cert, key))
            .transpose()?
            .map(Arc::new);
        let path = config.data_dir.clone();
        let options = StoreOptions {
            id_filter_bytes: u64::try_from(config.id_filter_mib)
                .unwrap_or(u64::MAX)
                .saturating_mul(1 << 20),
        };
        let store = tokio::task::spawn_blocking(move || Store::open_with(&path, options))
            .await
            .map_err(|e| StorageError::Internal(format!("open task failed: {e}")))?
            .map_err(|source| ServerError::Open {
                path: config.data_dir.display().to_string(),
                source,
            })?;
        crate::connections::raise_fd_limit(config.max_connections);
        let shutdown = CancellationToken::new();
        let queue = QueueLimits {
            requests: config.writer_queue_requests,
            kib: config.writer_queue_kib,
            timeout: config.writer_queue_timeout,
            spin: config.writer_spin,
        };
        let store = Arc::new(store);
        let log_applied = store.log_applied()?;
        let (service, writer_thread) = Service::start(store, shutdown.clone(), queue)?;
        if let Some(cluster) = &config.cluster {
            let node_id = crate::cluster::node_id(&config.data_dir)?;
            let cluster =
                crate::cluster::Cluster::connect(cluster.clone(), log_applied, node_id).await?;
            service.join_cluster(cluster);
        }
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let grpc_listener = match config.grpc_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServerError::Bind { addr, source })?,
            ),
            None => None,
        };
        tracing::info!(
            data_dir = %config.data_dir.display(),
            head_position = ?service.head_position(),
            "store opened"
        );
        if let Some(auth) = &auth {
            let tokens = auth.current().len();
            service.metrics().auth_tokens.set(tokens as i64);
            tracing::info!(tokens, "access control on");
        }
        Ok(Self {
            config,
            listener,
            grpc_listener,
            service,
            writer_thread,
            shutdown,
            auth,
            tls,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The address of the gRPC front end, when it is on.
    pub fn grpc_local_addr(&self) -> Option<std::io::Result<SocketAddr>> {
        self.grpc_listener.as_ref().map(TcpListener::local_addr)
    }

    /// Serves until `stop` is cancelled, then shuts down gracefully.
    pub async fn serve(self, stop: CancellationToken) -> Result<(), ServerError> {
        let Self {
            config,
            listener,
            grpc_listener,
            service,
            writer_thread,
            shutdown,
            auth,
            tls,
        } = self;
        let maintenance = Arc::new(Maintenance {
            scavenges: Arc::new(Jobs::load(JobKind::Scavenge, &service).await),
            verifies: Arc::new(Jobs::load(JobKind::Verify, &service).await),
            backups: Arc::new(Jobs::load(JobKind::Backup, &service).await),
            backup_dir: config.backup_dir.clone(),
        });
        if let Some(cluster) = service.cluster() {
            service.spawn(crate::maintenance::scavenge::compact_after_log_scavenges(
                Arc::clone(&service),
                Arc::clone(&maintenance.scavenges),
                cluster.scavenges(),
            ));
        }
        let app = crate::http::router(Arc::clone(&service), &config, maintenance, auth.clone());
        let limits = ConnectionLimits {
            max_connections: config.max_connections,
            header_timeout: config.header_timeout,
            idle_timeout: config.idle_timeout,
            write_stall_timeout: config.write_stall_timeout,
        };
        let connections = TaskTracker::new();
        if let Some(grpc_listener) = grpc_listener {
            let advertised = grpc_listener
                .local_addr()
                .unwrap_or_else(|_| config.grpc_listen.unwrap_or(config.listen));
            let grpc_config = crate::grpc::GrpcConfig {
                max_append_bytes: config.max_append_bytes,
                max_event_bytes: config.max_event_bytes,
                max_custom_metadata_bytes: config.max_custom_metadata_bytes,
                advertised,
                max_streams_per_connection: 256,
                max_connections: config.max_connections,
                max_subscriptions: config.max_subscriptions,
                write_stall_timeout: config.write_stall_timeout,
            };
            let security = crate::grpc::Security {
                auth: auth.clone(),
                tls: tls.clone(),
                handshake_timeout: config.header_timeout,
            };
            let (service, stop) = (Arc::clone(&service), stop.clone());
            connections.spawn(async move {
                let served =
                    crate::grpc::serve(grpc_listener, service, grpc_config, security, stop).await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "the gRPC front end stopped");
                }
            });
        }
        let metrics = Arc::clone(service.metrics());
        reload_on_hangup(auth, tls.clone(), Arc::clone(&metrics), stop.clone());
        // Returns once `stop` is cancelled; open connections then finish the
        // request they are answering and close.
        crate::connections::serve(
            listener,
            app,
            limits,
            tls,
            metrics,
            stop,
            connections.clone(),
        )
        .await;
        tracing::info!("shutting down: no new connections; finishing in-flight requests");
        // Ends long-polls and subscriptions so they answer now rather than at their deadline.
        shutdown.cancel();
        connections.close();
        if tokio::time::timeout(config.shutdown_timeout, connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(timeout = ?config.shutdown_timeout, "in-flight requests did not finish in time; closing them");
        }
        // Maintenance jobs, subscriptions and long-polls end on `shutdown`; wait
        // for them (bounded), so none still runs during the final flush.
        service.tasks().close();
        if tokio::time::timeout(config.shutdown_timeout, service.tasks().wait())
            .await
            .is_err()
        {
            tracing::warn!(
                tasks = service.tasks().len(),
                "background tasks did not stop in time; flushing anyway"
            );
        }
        service.flush().await?;
        drop(service);
        // The writer drains its queue and exits once the last handle is gone; requests
        // cut off by the timeout may still hold one, so do not wait forever.
        let joined = tokio::task::spawn_blocking(move || writer_thread.join());
        match tokio::time::timeout(std::time::Duration::from_secs(5), joined).await {
            Ok(_) => tracing::info!("writer stopped; shutdown complete"),
            Err(_) => tracing::warn!("writer still busy after shutdown; exiting anyway (every acknowledged append is already synced)"),
        }
        Ok(())
    }
}

/// On each SIGHUP until `stop`: reads the auth file and the certificate
/// again. A valid file takes effect (the changes are logged by token name,
/// never with secrets); an invalid one is logged and the one in force stays.
fn reload_on_hangup(
    auth: Option<Arc<Authenticator>>,
    tls: Option<Arc<Tls>>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => hangups,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP: the auth file and certificate will not be reloaded");
                return;
            }
        };
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    received = hangups.recv() => if received.is_none() { return },
                }
                tracing::info!("SIGHUP: reloading");
                match &auth {
                    None => tracing::info!("no --auth-file to reload"),
                    Some(auth) => match auth.reload() {
                        Ok(changes) => {
                            metrics.auth_reloads.inc();
                            metrics.auth_tokens.set(auth.current().len() as i64);
                            if changes.is_empty() {
                                tracing::info!("auth file reloaded: no change");
                            }
                            for change in changes {
                                tracing::info!(%change, "auth file reloaded");
                            }
                        }
                        Err(e) => {
                            metrics.auth_reload_failures.inc();
                            tracing::error!(error = %e, "auth file not reloaded; the tokens in force stay");
                        }
                    },
                }
                if let Some(tls) = &tls {
                    match tls.reload() {
                        Ok(()) => tracing::info!("TLS certificate reloaded"),
                        Err(e) => {
                            tracing::error!(error = %e, "TLS certificate not reloaded; the one in force stays")
                        }
                    }
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = (auth, tls, metrics, stop);
}
