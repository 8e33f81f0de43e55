//! The KurrentDB-compatible gRPC front end (`skald serve --grpc-listen`):
//! KurrentDB's v1 client protocol over plaintext HTTP/2 (tonic), on the same
//! service as the HTTP API, so applications written against KurrentDB's
//! official clients run on Skald by changing their connection string.
//!
//! `pb` is the code generated from the vendored protos (`proto/kurrentdb`);
//! `convert` maps between its messages and Skald's domain types; `streams`
//! serves `event_store.client.streams.Streams`, with `metadata` mapping the
//! `$$name` metadata streams onto stream metadata; `info` serves gossip and the
//! server-features probe. What is and is not implemented is listed in
//! `docs/kurrentdb-compat.md`.

mod convert;
mod info;
mod metadata;
mod streams;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::service::Service;

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
}

/// Serves the gRPC front end on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    service: Arc<Service>,
    config: GrpcConfig,
    stop: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    use pb::event_store::client::{
        gossip::gossip_server::GossipServer,
        persistent_subscriptions::persistent_subscriptions_server::PersistentSubscriptionsServer,
        server_features::server_features_server::ServerFeaturesServer,
        streams::streams_server::StreamsServer,
    };
    // A request may carry a whole append: its events plus protobuf framing.
    let max_message = config.max_append_bytes + (1 << 20);
    let streams = StreamsServer::new(streams::StreamsService::new(
        Arc::clone(&service),
        config.clone(),
    ))
    .max_decoding_message_size(max_message)
    .max_encoding_message_size(max_message);
    let incoming = counted_incoming(listener, &service, config.max_connections);
    tonic::transport::Server::builder()
        .max_concurrent_streams(Some(config.max_streams_per_connection))
        .tcp_nodelay(true)
        .add_service(streams)
        .add_service(GossipServer::new(info::GossipService::new(
            config.advertised,
        )))
        .add_service(ServerFeaturesServer::new(info::FeaturesService))
        .add_service(PersistentSubscriptionsServer::new(
            info::PersistentSubscriptionsService,
        ))
        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
        .await
}

/// An accepted connection holding its place under `--max-connections`.
struct Counted {
    io: tokio::net::TcpStream,
    _slot: tokio::sync::OwnedSemaphorePermit,
    _open: crate::metrics::GaugeGuard,
}

impl tonic::transport::server::Connected for Counted {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl tokio::io::AsyncRead for Counted {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Counted {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Accepted connections, each holding one of `max` places; one past the cap
/// is closed at once (and counted). Accept errors (out of file descriptors)
/// are logged and retried after a pause, not handed to tonic.
fn counted_incoming(
    listener: TcpListener,
    service: &Service,
    max: usize,
) -> impl futures::Stream<Item = Result<Counted, std::io::Error>> {
    let slots = Arc::new(tokio::sync::Semaphore::new(max));
    let metrics = Arc::clone(service.metrics());
    futures::stream::unfold(
        (listener, slots, metrics),
        |(listener, slots, metrics)| async move {
            loop {
                let io = match listener.accept().await {
                    Ok((io, _)) => io,
                    Err(e) => {
                        metrics.accept_errors.inc();
                        tracing::warn!(error = %e, "gRPC accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                    metrics.grpc_connections_rejected.inc();
                    drop(io);
                    continue;
                };
                let _ = io.set_nodelay(true);
                let counted = Counted {
                    io,
                    _slot: slot,
                    _open: crate::metrics::GaugeGuard::new(&metrics.grpc_connections),
                };
                return Some((Ok(counted), (listener, slots, metrics)));
            }
        },
    )
}
