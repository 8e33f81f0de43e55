//! `order_summary`: a read model of order totals in SQLite, exactly once.
//!
//! `apply` only prepares the changes of a batch; `commit`, which the runner calls
//! once whatever the batch emitted is stored, writes them and the checkpoint in
//! one SQLite transaction, so a crash anywhere cannot count an event twice: the
//! checkpoint moves only with the rows it describes.
//!
//! Events: streams `order-<id>` with `OrderPlaced {"total": n}`,
//! `ItemAdded {"amount": n}` and `OrderCancelled {}`.
//!
//! Run against a local server: `cargo run -p skald-client --example order_summary -- [URL] [DB]`

use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension};
use skald_client::projection::{Batch, BoxError, CheckpointStore, Emitter, Filter, Projection};

/// The read model: one row per order, plus the checkpoint.
pub struct OrderSummary {
    db: Arc<Mutex<Connection>>,
    /// The changes of the batch `apply` prepared and `commit` writes.
    pending: Vec<Change>,
}

/// One change to an order's row.
enum Change {
    Placed { order: String, total: i64 },
    ItemAdded { order: String, amount: i64 },
    Cancelled { order: String },
}

/// Reads the checkpoint that `OrderSummary::commit` writes; saving is a no-op
/// because `commit` already saved it in the same transaction as the rows.
pub struct SqliteCheckpoint {
    db: Arc<Mutex<Connection>>,
}

const NAME: &str = "order-summary";

impl OrderSummary {
    /// Opens (or creates) the read model in `path`; returns it and its checkpoint store.
    pub fn open(path: &std::path::Path) -> Result<(Self, SqliteCheckpoint), BoxError> {
        let conn = Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS orders (
                 order_id TEXT PRIMARY KEY, total INTEGER NOT NULL, items INTEGER NOT NULL,
                 cancelled INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS checkpoints (name TEXT PRIMARY KEY, position INTEGER NOT NULL);",
        )?;
        let db = Arc::new(Mutex::new(conn));
        Ok((
            Self {
                db: Arc::clone(&db),
                pending: Vec::new(),
            },
            SqliteCheckpoint { db },
        ))
    }

    /// `(order id, total, items, cancelled)` for every order, by id.
    pub fn rows(&self) -> Result<Vec<(String, i64, i64, bool)>, BoxError> {
        let db = self.db.lock().map_err(|_| "poisoned")?;
        let mut statement =
            db.prepare("SELECT order_id, total, items, cancelled FROM orders ORDER BY order_id")?;
        let rows = statement
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, i64>(3)? != 0))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}

impl Projection for OrderSummary {
    fn name(&self) -> &str {
        NAME
    }

    fn filter(&self) -> Filter {
        Filter {
            stream_prefix: Some("order-".into()),
            event_types: Vec::new(),
        }
    }

    async fn apply(&mut self, batch: Batch<'_>, _emit: &mut Emitter) -> Result<(), BoxError> {
        // Only prepares: a batch the runner replays (after a crash before
        // `commit`) starts over from nothing.
        self.pending.clear();
        for event in batch.events {
            let order = event.stream.trim_start_matches("order-").to_owned();
            let number = |field: &str| event.data[field].as_i64().unwrap_or(0);
            self.pending.push(match event.event_type.as_str() {
                "OrderPlaced" => Change::Placed {
                    order,
                    total: number("total"),
                },
                "ItemAdded" => Change::ItemAdded {
                    order,
                    amount: number("amount"),
                },
                "OrderCancelled" => Change::Cancelled { order },
                _ => continue,
            });
        }
        Ok(())
    }

    async fn commit(&mut self, position: u64) -> Result<(), BoxError> {
        let mut db = self.db.lock().map_err(|_| "poisoned")?;
        let tx = db.transaction()?;
        for change in self.pending.drain(..) {
            match change {
                Change::Placed { order, total } => tx.execute(
                    "INSERT INTO orders (order_id, total, items, cancelled) VALUES (?1, ?2, 0, 0)
                     ON CONFLICT(order_id) DO UPDATE SET total = total + ?2",
                    params![order, total],
                )?,
                Change::ItemAdded { order, amount } => tx.execute(
                    "UPDATE orders SET total = total + ?2, items = items + 1 WHERE order_id = ?1",
                    params![order, amount],
                )?,
                Change::Cancelled { order } => tx.execute(
                    "UPDATE orders SET cancelled = 1 WHERE order_id = ?1",
                    params![order],
                )?,
            };
        }
        // The checkpoint moves in the same transaction as the rows.
        tx.execute(
            "INSERT INTO checkpoints (name, position) VALUES (?1, ?2)
             ON CONFLICT(name) DO UPDATE SET position = ?2",
            params![NAME, position as i64],
        )?;
        tx.commit()?;
        Ok(())
    }

    async fn reset(&mut self) -> Result<(), BoxError> {
        let db = self.db.lock().map_err(|_| "poisoned")?;
        db.execute_batch("DELETE FROM orders; DELETE FROM checkpoints;")?;
        Ok(())
    }
}

impl CheckpointStore for SqliteCheckpoint {
    async fn load(&mut self, projection: &str) -> Result<Option<u64>, BoxError> {
        let db = self.db.lock().map_err(|_| "poisoned")?;
        let position: Option<i64> = db
            .query_row(
                "SELECT position FROM checkpoints WHERE name = ?1",
                params![projection],
                |r| r.get(0),
            )
            .optional()?;
        Ok(position.map(|p| p as u64))
    }

    async fn save(&mut self, _projection: &str, _position: u64) -> Result<(), BoxError> {
        Ok(()) // written by `commit`, in the rows' transaction
    }

    async fn clear(&mut self, projection: &str) -> Result<(), BoxError> {
        let db = self.db.lock().map_err(|_| "poisoned")?;
        db.execute(
            "DELETE FROM checkpoints WHERE name = ?1",
            params![projection],
        )?;
        Ok(())
    }
}

#[allow(dead_code)] // `main` is unused where tests include this file as a module
#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:2114".into());
    let path = args.next().unwrap_or_else(|| "order_summary.sqlite".into());
    let client = skald_client::Client::new(url)?;
    let (projection, checkpoints) = OrderSummary::open(std::path::Path::new(&path))?;
    let mut runner =
        skald_client::projection::ProjectionRunner::new(client, projection, checkpoints);
    let mut status = runner.status();
    tokio::spawn(async move {
        while status.changed().await.is_ok() {
            let s = *status.borrow();
            eprintln!(
                "{:?} checkpoint={:?} lag={}",
                s.state,
                s.checkpoint,
                s.lag()
            );
        }
    });
    let stop = tokio_util::sync::CancellationToken::new();
    let on_ctrl_c = stop.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        on_ctrl_c.cancel();
    });
    runner.run(stop).await?;
    for (order, total, items, cancelled) in runner.projection().rows()? {
        println!(
            "{order}\t{total}\t{items}\t{}",
            if cancelled { "cancelled" } else { "" }
        );
    }
    Ok(())
}
