//! `public_events`: turns internal order events into denormalized external
//! events on the `public-orders` stream (event-carried state transfer).
//!
//! Internal events carry deltas (`OrderPlaced {"total"}`, `ItemAdded {"amount"}`);
//! other systems want the whole state, so each one becomes `OrderUpdated` with
//! the order's current total and item count. The runner gives every emitted event
//! an id derived from this projection's name and the source position, so a
//! replay after a crash re-sends the same ids and the server stores them once.
//!
//! Run: `cargo run -p skald-client --example public_events -- [URL] [CHECKPOINT_DIR]`

use std::collections::HashMap;

use skald_client::projection::{
    Batch, BoxError, Emitter, FileCheckpointStore, Filter, Projection, ProjectionRunner,
};
use skald_client::EventData;

/// The public stream the projection writes.
pub const PUBLIC_STREAM: &str = "public-orders";

/// Translates `order-*` events into `OrderUpdated` events on [`PUBLIC_STREAM`].
#[derive(Default)]
pub struct PublicOrders {
    orders: HashMap<String, (i64, i64)>,
}

impl Projection for PublicOrders {
    fn name(&self) -> &str {
        "public-orders"
    }

    fn filter(&self) -> Filter {
        Filter {
            stream_prefix: Some("order-".into()),
            event_types: Vec::new(),
        }
    }

    async fn apply(&mut self, batch: Batch<'_>, emit: &mut Emitter) -> Result<(), BoxError> {
        for event in batch.events {
            let order = event.stream.trim_start_matches("order-").to_owned();
            let state = self.orders.entry(order.clone()).or_default();
            match event.event_type.as_str() {
                "OrderPlaced" => state.0 += event.data["total"].as_i64().unwrap_or(0),
                "ItemAdded" => {
                    state.0 += event.data["amount"].as_i64().unwrap_or(0);
                    state.1 += 1;
                }
                _ => continue,
            }
            let public = serde_json::json!({"order_id": order, "total": state.0, "items": state.1});
            emit.emit(
                event,
                PUBLIC_STREAM,
                EventData::json("OrderUpdated", &public)?,
            );
        }
        Ok(())
    }

    async fn reset(&mut self) -> Result<(), BoxError> {
        self.orders.clear();
        Ok(())
    }
}

#[allow(dead_code)] // `main` is unused where tests include this file as a module
#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let client = skald_client::Client::new(
        args.next()
            .unwrap_or_else(|| "http://127.0.0.1:2114".into()),
    )?;
    let checkpoints =
        FileCheckpointStore::new(args.next().unwrap_or_else(|| "checkpoints".into()))?;
    // The in-memory state is rebuilt on every start: replay from 0 (the emitted
    // ids are deterministic, so the replay emits nothing new).
    let mut runner = ProjectionRunner::new(client, PublicOrders::default(), checkpoints);
    runner.rebuild().await?;
    let stop = tokio_util::sync::CancellationToken::new();
    let on_ctrl_c = stop.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        on_ctrl_c.cancel();
    });
    runner.run(stop).await?;
    Ok(())
}
