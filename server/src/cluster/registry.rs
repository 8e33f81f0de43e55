//! The cluster's registry, in a JetStream key-value bucket
//! (`<stream>-nodes`): which nodes apply the log, how far each had applied it
//! to its store when it last reported (on start and at every scavenge end it
//! applies), and the horizon up to which JetStream may have purged messages. One key,
//! changed only by compare-and-set, so a node joining and a node moving the
//! horizon cannot miss each other: either the joining node is counted before
//! the horizon moves, or it sees the horizon and refuses to start.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use serde::{Deserialize, Serialize};

/// The bucket's one key.
const KEY: &str = "registry";
/// Compare-and-set attempts before giving up (each conflict is another
/// node's change, so this many in a row means something is wrong).
const MAX_ATTEMPTS: usize = 64;

/// The registry's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registry {
    /// Node id -> the log sequence its store had applied when it last reported.
    pub nodes: BTreeMap<String, u64>,
    /// Every registered node has applied the log up to this sequence, so
    /// JetStream may have purged messages up to it (never one after it).
    pub horizon: u64,
    /// The purges for the removals logged up to this sequence are done.
    pub purged_through: u64,
}

impl Registry {
    /// Whether a node that applied the log up to `applied` can read the rest
    /// of it from JetStream (it needs the messages after `applied` only).
    pub fn can_catch_up(&self, applied: u64) -> bool {
        applied >= self.horizon
    }

    /// Records that `node` applied the log up to `applied`, and moves the
    /// horizon to what every registered node has applied.
    pub fn report(&mut self, node: &str, applied: u64) {
        let entry = self.nodes.entry(node.to_owned()).or_default();
        *entry = (*entry).max(applied);
        self.advance();
    }

    /// Forgets `node` (gone for good); returns whether it was registered.
    pub fn forget(&mut self, node: &str) -> bool {
        let known = self.nodes.remove(node).is_some();
        self.advance();
        known
    }

    /// Every registered node applied at least the least report, so nothing
    /// below it is needed from JetStream by any of them.
    fn advance(&mut self) {
        if let Some(least) = self.nodes.values().min() {
            self.horizon = self.horizon.max(*least);
        }
    }
}

/// Why the registry could not be read or changed.
#[derive(Debug, thiserror::Error)]
#[error("the cluster's registry (bucket {bucket}): {message}")]
pub struct RegistryError {
    bucket: String,
    message: String,
}

/// The bucket holding the registry.
pub struct RegistryBucket {
    bucket: String,
    kv: kv::Store,
}

impl RegistryBucket {
    /// Creates the bucket or opens the existing one.
    pub async fn open(
        js: &jetstream::Context,
        stream: &str,
        replicas: usize,
    ) -> Result<Self, RegistryError> {
        let bucket = format!("{stream}-nodes");
        let error = |message: String| RegistryError {
            bucket: bucket.clone(),
            message,
        };
        let config = kv::Config {
            bucket: bucket.clone(),
            history: 1,
            storage: jetstream::stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        };
        let kv = match js.create_key_value(config).await {
            Ok(kv) => kv,
            Err(created) => js
                .get_key_value(&bucket)
                .await
                .map_err(|e| error(format!("cannot create it ({created}) or open it ({e})")))?,
        };
        Ok(Self { bucket, kv })
    }

    /// The registry as stored now.
    pub async fn read(&self) -> Result<Registry, RegistryError> {
        Ok(self.read_entry().await?.0)
    }

    async fn read_entry(&self) -> Result<(Registry, Option<u64>), RegistryError> {
        match self.kv.entry(KEY).await.map_err(|e| self.error(e))? {
            Some(entry) if !entry.value.is_empty() => {
                let registry = serde_json::from_slice(&entry.value)
                    .map_err(|e| self.error(format!("not a registry: {e}")))?;
                Ok((registry, Some(entry.revision)))
            }
            Some(entry) => Ok((Registry::default(), Some(entry.revision))),
            None => Ok((Registry::default(), None)),
        }
    }

    /// Applies `change` to the registry by compare-and-set (reading it again
    /// after another node's change got in first); writes only when it
    /// changed something. Returns what `change` returned last and the
    /// registry as stored.
    pub async fn change<T>(
        &self,
        mut change: impl FnMut(&mut Registry) -> T,
    ) -> Result<(T, Registry), RegistryError> {
        for _ in 0..MAX_ATTEMPTS {
            let (before, revision) = self.read_entry().await?;
            let mut after = before.clone();
            let answer = change(&mut after);
            if after == before {
                return Ok((answer, after));
            }
            let value = serde_json::to_vec(&after).expect("a registry serializes");
            let written = match revision {
                Some(revision) => self
                    .kv
                    .update(KEY, value.into(), revision)
                    .await
                    .map_err(|e| e.to_string()),
                None => self
                    .kv
                    .create(KEY, value.into())
                    .await
                    .map_err(|e| e.to_string()),
            };
            match written {
                Ok(_) => return Ok((answer, after)),
                Err(e) => {
                    tracing::debug!(error = %e, "the registry changed under this node; reading it again");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
        Err(self.error(format!(
            "{MAX_ATTEMPTS} changes in a row lost the compare-and-set"
        )))
    }

    fn error(&self, e: impl std::fmt::Display) -> RegistryError {
        RegistryError {
            bucket: self.bucket.clone(),
            message: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_horizon_is_what_every_registered_node_applied() {
        let mut registry = Registry::default();
        registry.report("a", 10);
        assert_eq!(registry.horizon, 10);
        // A node joining behind holds the horizon where it is...
        registry.report("b", 4);
        assert_eq!(registry.horizon, 10, "the horizon never goes back");
        registry.report("a", 30);
        registry.report("b", 20);
        assert_eq!(registry.horizon, 20);
        // ...reports never go back either...
        registry.report("b", 5);
        assert_eq!(registry.nodes["b"], 20);
        // ...and forgetting the slowest node lets it move.
        registry.report("c", 21);
        assert!(registry.forget("b"));
        assert!(!registry.forget("b"));
        assert_eq!(registry.horizon, 21);
        // Only messages after `applied` are needed: at horizon 21, a node
        // that applied 21 can catch up, one that applied 20 cannot.
        assert!(registry.can_catch_up(21));
        assert!(!registry.can_catch_up(20));
        assert!(Registry::default().can_catch_up(0));
    }
}
