//! Which backend a server runs on, and opening it: the one place where the
//! store settings (made by `Config::runtime` from `[store]`)
//! become the [`Stores`] the rest of the bus uses.

use super::Stores;
use super::nats::{ConnectError, NatsOptions, NatsStore};
use super::sqlite::{Durability, OpenError, SqliteStore};
use crate::clock::SharedClock;
use std::path::PathBuf;
use std::sync::Arc;

/// The backend to open.
#[derive(Clone, Debug)]
pub enum StoreSettings {
    /// SQLite in a data dir: one process owns it (`sqlite:DIR`, the default).
    Sqlite {
        /// The data dir (database, lock file, plugin files).
        dir: PathBuf,
        /// How hard commits are synced.
        durability: Durability,
    },
    /// NATS JetStream: any number of processes share the deployment
    /// (`nats://host:port[,...]`).
    Nats(Box<NatsOptions>),
}

impl StoreSettings {
    /// How logs and errors name the store (`sqlite:DIR`, `nats://...`), without secrets.
    pub fn describe(&self) -> String {
        match self {
            Self::Sqlite { dir, .. } => format!("sqlite:{}", dir.display()),
            Self::Nats(o) => format!("{} (prefix {})", o.urls.join(","), o.prefix),
        }
    }
}

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenStoreError {
    /// The SQLite data dir could not be opened.
    #[error(transparent)]
    Sqlite(#[from] OpenError),
    /// The NATS cluster could not be reached or set up.
    #[error(transparent)]
    Nats(#[from] ConnectError),
}

/// Whether the backend can take writes right now: what `/readyz` reports.
pub trait Health: Send + Sync + 'static {
    /// `Err(reason)` while it cannot (e.g. the cluster is out of reach).
    /// Cheap: it reads state kept up to date in the background.
    fn check(&self) -> Result<(), String>;
}

/// A backend that is always there (it lives in this process).
#[derive(Debug)]
pub(super) struct Local;

impl Health for Local {
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Opens the configured backend. A NATS cluster that does not answer fails
/// within its connect timeout (plus one request), with the URLs in the error.
pub async fn open(settings: &StoreSettings, clock: SharedClock) -> Result<Stores, OpenStoreError> {
    Ok(match settings {
        StoreSettings::Sqlite { dir, durability } => {
            Stores::new(Arc::new(SqliteStore::open(dir, *durability, clock)?))
        }
        StoreSettings::Nats(options) => {
            let store = NatsStore::connect((**options).clone(), clock).await?;
            let (health, blobs) = (store.health(), store.blobs());
            Stores::new(Arc::new(store)).shared(health, blobs)
        }
    })
}
