//! `event_store.client.gossip.Gossip` (this node, the only member),
//! `event_store.client.server_features.ServerFeatures` (exactly the methods
//! Skald implements) and the persistent subscriptions' `List` (none: Skald
//! has no persistent subscriptions, and clients that probe for them work).

use std::net::SocketAddr;

use tonic::{Request, Response, Status};

use super::pb::event_store::client::gossip::{
    gossip_server::Gossip, member_info::VNodeState, ClusterInfo, EndPoint, MemberInfo,
};
use super::pb::event_store::client::persistent_subscriptions::{
    persistent_subscriptions_server::PersistentSubscriptions, ListReq, ListResp,
};
use super::pb::event_store::client::server_features::{
    server_features_server::ServerFeatures, SupportedMethod, SupportedMethods,
};
use super::pb::event_store::client::{uuid, Empty, Uuid};

pub struct GossipService {
    advertised: SocketAddr,
    instance: uuid::Value,
}

impl GossipService {
    pub fn new(advertised: SocketAddr) -> Self {
        Self {
            advertised,
            instance: uuid::Value::String(::uuid::Uuid::now_v7().to_string()),
        }
    }
}

#[tonic::async_trait]
impl Gossip for GossipService {
    async fn read(&self, _request: Request<Empty>) -> Result<Response<ClusterInfo>, Status> {
        let member = MemberInfo {
            instance_id: Some(Uuid {
                value: Some(self.instance.clone()),
            }),
            time_stamp: super::convert::ticks(crate::storage::now_micros()),
            state: VNodeState::Leader as i32,
            is_alive: true,
            http_end_point: Some(EndPoint {
                address: self.advertised.ip().to_string(),
                port: u32::from(self.advertised.port()),
            }),
        };
        Ok(Response::new(ClusterInfo {
            members: vec![member],
        }))
    }
}

pub struct FeaturesService;

/// `(service, method, features)` Skald answers; everything else is
/// `UNIMPLEMENTED`.
const SUPPORTED: &[(&str, &str, &[&str])] = &[
    (
        "event_store.client.streams.streams",
        "read",
        &["position", "events"],
    ),
    ("event_store.client.streams.streams", "append", &[]),
    (
        "event_store.client.streams.streams",
        "batchappend",
        &["deadline_duration"],
    ),
    ("event_store.client.streams.streams", "delete", &[]),
    ("event_store.client.streams.streams", "tombstone", &[]),
    ("event_store.client.gossip.gossip", "read", &[]),
    (
        "event_store.client.persistent_subscriptions.persistentsubscriptions",
        "list",
        &[],
    ),
    (
        "event_store.client.server_features.serverfeatures",
        "getsupportedmethods",
        &[],
    ),
];

#[tonic::async_trait]
impl ServerFeatures for FeaturesService {
    async fn get_supported_methods(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<SupportedMethods>, Status> {
        let methods = SUPPORTED
            .iter()
            .map(|(service, method, features)| SupportedMethod {
                service_name: (*service).to_owned(),
                method_name: (*method).to_owned(),
                features: features.iter().map(|f| (*f).to_owned()).collect(),
            })
            .collect();
        Ok(Response::new(SupportedMethods {
            methods,
            event_store_server_version: env!("CARGO_PKG_VERSION").to_owned(),
        }))
    }
}

pub struct PersistentSubscriptionsService {
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

#[tonic::async_trait]
impl PersistentSubscriptions for PersistentSubscriptionsService {
    /// Skald has no persistent subscriptions: every list is empty.
    async fn list(&self, request: Request<ListReq>) -> Result<Response<ListResp>, Status> {
        super::auth::Access::of(&request)?.need(crate::auth::Role::Reader, &self.metrics)?;
        Ok(Response::new(ListResp {
            subscriptions: Vec::new(),
        }))
    }
}
