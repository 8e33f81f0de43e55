//! The KurrentDB-compatible gRPC front end (`skald serve --grpc-listen`):
//! KurrentDB's v1 client protocol over plaintext HTTP/2 (tonic), on the same
//! service as the HTTP API, so applications written against KurrentDB's
//! official clients run on Skald by changing their connection string.
//!
//! `pb` is the code generated from the vendored protos (`proto/kurrentdb`);
//! `convert` maps between its messages and Skald's domain types; `streams`
//! serves `event_store.client.streams.Streams`, with `metadata` mapping the
//! `$$name` metadata streams onto stream metadata; `info` serves gossip and the
//! server-features probe; `auth` checks the HTTP API's tokens on every call.
//! What is and is not implemented is listed in `docs/kurrentdb-compat.md`.

mod auth;
mod convert;
mod info;
mod metadata;
mod streams;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::service::Service;
use crate::tls::Tls;

/// Code generated from the vendored protos, in modules named after their
/// packages (the generated code refers to other packages by relative path).
#[allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub)]
pub mod pb {
    pub mod event_store {
        pub mod client {
            tonic::include_proto!("event_store.client");
            pub mod streams {
                tonic::include_proto!("event_store.client.streams");
            }
            pub mod gossip {
                tonic::include_proto!("event_store.client.gossip");
            }
            pub mod server_features {
                tonic::include_proto!("event_store.client.server_features");
            }
            pub mod persistent_subscriptions {
                tonic::include_proto!("event_store.client.persistent_subscriptions");
            }
        }
    }
    pub mod google {
        pub mod rpc {
            tonic::include_proto!("google.rpc");
        }
    }
}

/// What the gRPC front end needs besides the service.
#[derive(Debug, Clone)]
pub struct GrpcConfig {
    /// The largest append, in bytes of event data, metadata and type (the
    /// HTTP API's `--max-append-bytes`).
    pub max_append_bytes: usize,
    /// The largest single event (`--max-event-bytes`).
    pub max_event_bytes: usize,
    /// The largest custom stream metadata (`--max-custom-metadata-bytes`).
    pub max_custom_metadata_bytes: usize,
    /// Where clients reach this node, as gossip tells them.
    pub advertised: SocketAddr,
    /// Streams (calls) one connection may have open at once.
    pub max_streams_per_connection: u32,
    /// Connections open at once (`--max-connections`, counted apart from
    /// the HTTP API's); more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Subscriptions open at once (`--max-subscriptions`, counted apart
    /// from the HTTP API's).
    pub max_subscriptions: usize,
    /// `--write-stall-timeout-secs`: a connection whose client reads
    /// nothing for about this long is closed (see `serve`).
    pub write_stall_timeout: std::time::Duration,
}

/// Access control and TLS, shared with the HTTP API (`--auth-file`,
/// `--tls-cert`): the same tokens, the same certificate, both reloaded on
/// SIGHUP.
#[derive(Clone, Default)]
pub struct Security {
    pub auth: Option<Arc<Authenticator>>,
    pub tls: Option<Arc<Tls>>,
    /// How long a new connection may take over its TLS handshake.
    pub handshake_timeout: std::time::Duration,
}

/// Serves the gRPC front end on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    service: Arc<Service>,
    config: GrpcConfig,
    security: Security,
    stop: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    use pb::event_store::client::{
        gossip::gossip_server::GossipServer,
        persistent_subscriptions::persistent_subscriptions_server::PersistentSubscriptionsServer,
        server_features::server_features_server::ServerFeaturesServer,
        streams::streams_server::StreamsServer,
    };
    use tonic::service::interceptor::InterceptedService;
    let authenticate = auth::Authenticate {
        auth: security.auth.clone(),
        metrics: Arc::clone(service.metrics()),
    };
    // A request may carry a whole append: its events plus protobuf framing.
    let max_message = config.max_append_bytes + (1 << 20);
    let streams = StreamsServer::new(streams::StreamsService::new(
        Arc::clone(&service),
        config.clone(),
    ))
    .max_decoding_message_size(max_message)
    .max_encoding_message_size(max_message);
    let persistent = PersistentSubscriptionsServer::new(info::PersistentSubscriptionsService {
        metrics: Arc::clone(service.metrics()),
    });
    let incoming = incoming(listener, &service, config.max_connections, security);
    // A client that reads nothing must not hold its connection, and what
    // the server buffered for it, forever: HTTP/2 flow control bounds what
    // a stream buffers, but not how long. After half the write stall timeout
    // without a frame from the client the server pings it, and closes the
    // connection if the ping is not acknowledged within the other half: a
    // client that reads none of what it is sent never sees the ping. (KurrentDB
    // pings its clients the same way, every 10 s by default.)
    let half_stall = config.write_stall_timeout / 2;
    tonic::transport::Server::builder()
        .max_concurrent_streams(Some(config.max_streams_per_connection))
        .http2_keepalive_interval(Some(half_stall))
        .http2_keepalive_timeout(Some(half_stall))
        .tcp_nodelay(true)
        .add_service(InterceptedService::new(streams, authenticate.clone()))
        .add_service(GossipServer::new(info::GossipService::new(
            config.advertised,
        )))
        .add_service(ServerFeaturesServer::new(info::FeaturesService))
        .add_service(InterceptedService::new(persistent, authenticate))
        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
        .await
}

/// An accepted connection (after its TLS handshake, with TLS on) holding
/// its place under `--max-connections`.
struct Counted {
    io: Io,
    _slot: tokio::sync::OwnedSemaphorePermit,
    _open: crate::metrics::GaugeGuard,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl tonic::transport::server::Connected for Counted {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        match &self.io {
            Io::Plain(tcp) => tcp.connect_info(),
            Io::Tls(tls) => tls.get_ref().0.connect_info(),
        }
    }
}

/// Forwards each I/O call to the plain or TLS stream.
macro_rules! forward {
    ($self:ident, $io:ident => $call:expr) => {
        match &mut $self.io {
            Io::Plain($io) => {
                let $io = std::pin::Pin::new($io);
                $call
            }
            Io::Tls($io) => {
                let $io = std::pin::Pin::new($io.as_mut());
                $call
            }
        }
    };
}

impl tokio::io::AsyncRead for Counted {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        forward!(self, io => io.poll_read(cx, buf))
    }
}

impl tokio::io::AsyncWrite for Counted {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        forward!(self, io => io.poll_write(cx, buf))
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        forward!(self, io => io.poll_flush(cx))
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        forward!(self, io => io.poll_shutdown(cx))
    }
}

/// Accepted connections, each holding one of `max` places from its accept
/// on; one past the cap is closed at once (and counted). With TLS, each
/// handshake runs on its own task, bounded by the handshake timeout, so a
/// client that never completes one holds up nobody else. Accept errors (out
/// of file descriptors) are logged and retried after a pause, not handed to
/// tonic. The accept loop ends when tonic drops the stream (shutdown).
fn incoming(
    listener: TcpListener,
    service: &Service,
    max: usize,
    security: Security,
) -> tokio_stream::wrappers::ReceiverStream<Result<Counted, std::io::Error>> {
    let slots = Arc::new(tokio::sync::Semaphore::new(max));
    let metrics = Arc::clone(service.metrics());
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let tcp = tokio::select! {
                () = tx.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _)) => tcp,
                    Err(e) => {
                        metrics.accept_errors.inc();
                        tracing::warn!(error = %e, "gRPC accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                metrics.grpc_connections_rejected.inc();
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let open = crate::metrics::GaugeGuard::new(&metrics.grpc_connections);
            let Some(tls) = &security.tls else {
                let counted = Counted {
                    io: Io::Plain(tcp),
                    _slot: slot,
                    _open: open,
                };
                if tx.send(Ok(counted)).await.is_err() {
                    return;
                }
                continue;
            };
            let (acceptor, tx, metrics) = (tls.grpc_acceptor(), tx.clone(), Arc::clone(&metrics));
            let timeout = security.handshake_timeout;
            tokio::spawn(async move {
                match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let counted = Counted {
                            io: Io::Tls(Box::new(stream)),
                            _slot: slot,
                            _open: open,
                        };
                        let _ = tx.send(Ok(counted)).await;
                    }
                    Ok(Err(e)) => {
                        metrics.tls_handshake_failures.inc();
                        tracing::debug!(error = %e, "gRPC TLS handshake failed");
                    }
                    Err(_) => {
                        metrics.connections_timed_out.inc();
                        tracing::debug!("gRPC connection closed: no TLS handshake in time");
                    }
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
