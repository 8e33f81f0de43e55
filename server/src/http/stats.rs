//! `/admin/stats` (JSON) and `/metrics` (Prometheus): what the server is doing.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use skald_proto::Stats;

use super::error::ApiError;
use super::AppState;
use skald_proto::JobResult;

pub async fn stats(State(state): State<AppState>) -> Result<Response, ApiError> {
    let service = &state.service;
    let head = service.head_position();
    let removed = service.removed_events().await?;
    let engine = service.engine_stats().await;
    let metrics = service.metrics();
    let gauge = |g: &prometheus_client::metrics::gauge::Gauge| g.get().max(0) as u64;
    Ok(Json(Stats {
        head_position: head,
        stream_count_estimate: engine.estimated_streams,
        event_count: head.map_or(0, |h| h + 1).saturating_sub(removed),
        events_removed_by_scavenging: removed,
        disk_bytes: service.disk_bytes().await,
        rocksdb: skald_proto::EngineStats {
            write_amplification: engine.write_amplification,
            pending_compaction_bytes: engine.pending_compaction_bytes,
            running_compactions: engine.running_compactions,
            memtable_bytes: engine.memtable_bytes,
            block_cache_bytes: engine.block_cache_bytes,
            table_readers_bytes: engine.table_readers_bytes,
            sst_bytes: engine.sst_bytes,
        },
        append_rate_per_sec_1m: metrics.append_rate(),
        append_history: metrics.append_history(),
        read_rate_per_sec_1m: metrics.read_rate(),
        live_subscriptions: gauge(&metrics.subscriptions),
        long_polls_waiting: gauge(&metrics.long_polls),
        open_connections: gauge(&metrics.connections),
        writer_queue_requests: service.writer_queue().0,
        writer_queue_kib: service.writer_queue().1,
        scavenge: state.maintenance.scavenges.current(),
        replication: service
            .cluster()
            .map(|cluster| skald_proto::ReplicationStats {
                applied_sequence: cluster.applied(),
                lag_messages: cluster.lag(),
                ready: cluster.ready() && !cluster.stopped(),
                stopped: cluster.stopped(),
            }),
    })
    .into_response())
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    let metrics = state.service.metrics();
    let (requests, kib) = state.service.writer_queue();
    metrics.writer_queue_requests.set(requests as i64);
    if let Some(cluster) = state.service.cluster() {
        metrics
            .replication_lag
            .set(i64::try_from(cluster.lag()).unwrap_or(i64::MAX));
    }
    metrics.writer_queue_kib.set(kib as i64);
    metrics.set_id_filter(&state.service.id_filter_stats());
    let scavenge = state.maintenance.scavenges.list().into_iter().next();
    if let Some(report) = scavenge {
        let counter = |name: &str| report.counters.get(name).copied().unwrap_or(0) as i64;
        metrics
            .scavenge_running
            .set(i64::from(report.result == JobResult::Running));
        metrics
            .scavenge_events_scanned
            .set(counter("events_scanned"));
        metrics
            .scavenge_events_removed
            .set(counter("events_removed"));
        metrics
            .scavenge_bytes_reclaimed
            .set(counter("bytes_reclaimed"));
    }
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(header::CONTENT_TYPE, content_type)], metrics.render()).into_response()
}
