//! Configuration on JetStream: a key/value table (stream
//! `P_CONFIG`, one message per key), watched by every node.
//!
//! Keys (each part one escaped subject token):
//!
//! | key                          | value                                  |
//! |------------------------------|----------------------------------------|
//! | `t.<tenant>`                 | the tenant record                      |
//! | `k.<key id>`                 | the key record and whether it is revoked |
//! | `h.<hash>`                   | the key id holding that hash (uniqueness) |
//! | `r.<tenant>.<kind>.<name>`   | the resource                           |
//! | `s.<setting>`                | the setting                            |
//!
//! "Create if absent" (tenants, keys) and "change if unchanged" (revoking a
//! key) are compare-and-set writes on the key's revision, so two nodes
//! creating the same tenant at once get one success and one `Conflict`.
//! A revoked key stays as a record (`revoked: true`): its id and hash stay
//! taken, as in the other backends.
//!
//! [`ConfigStore::watch`] is an ordered consumer on the stream that starts
//! at its end: every write after it began, tombstones included, in stream
//! order. This is how rule, plugin and tenant changes made on one node
//! reach every other node within milliseconds. The table remembers the
//! revision of this handle's own writes, which is how
//! [`ConfigWatch::superseded`] knows a reported change is not newer than
//! what this node wrote (and applied) itself.

use super::table::{self, Expect, TableError};
use super::{NatsStore, token, untoken};
use crate::store::config::{ConfigChange, ConfigWatch};
use crate::store::{
    ConfigSnapshot, ConfigStore, KeyRecord, Millis, Resource, ResourceKind, StoreError,
    StoreResult, TenantRecord,
};
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct TenantJson {
    name: String,
    created_ms: Millis,
}

#[derive(Serialize, Deserialize)]
struct KeyJson {
    id: String,
    tenant: String,
    hash: String,
    created_ms: Millis,
    revoked: bool,
}

#[derive(Serialize, Deserialize)]
struct ResourceJson {
    tenant: String,
    kind: String,
    name: String,
    spec: serde_json::Value,
    updated_ms: Millis,
}

#[derive(Serialize, Deserialize)]
struct SettingJson {
    key: String,
    value: String,
}

fn json(v: &impl Serialize) -> StoreResult<Bytes> {
    serde_json::to_vec(v)
        .map(Bytes::from)
        .map_err(|e| StoreError::Backend(e.into()))
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, b: &[u8]) -> StoreResult<T> {
    serde_json::from_slice(b)
        .map_err(|e| StoreError::Backend(anyhow::anyhow!("stored {what} is unreadable: {e}")))
}

fn resource_key(tenant: &str, kind: ResourceKind, name: &str) -> String {
    format!(
        "r.{}.{}.{}",
        token(tenant),
        token(kind.as_str()),
        token(name)
    )
}

impl ResourceJson {
    fn into_resource(self) -> StoreResult<Resource> {
        let kind = ResourceKind::parse(&self.kind).ok_or_else(|| {
            StoreError::Backend(anyhow::anyhow!("unknown resource kind {}", self.kind))
        })?;
        Ok(Resource {
            tenant: self.tenant,
            kind,
            name: self.name,
            spec: self.spec,
            updated_ms: self.updated_ms,
        })
    }
}

impl NatsStore {
    /// Writes `value` at `key` only if the key holds no live value now;
    /// false if it does.
    async fn create_key(&self, key: &str, value: Bytes) -> StoreResult<bool> {
        let s = &self.inner;
        loop {
            let current = s
                .config
                .get(key)
                .await
                .map_err(|e| e.into_store(s, "read config"))?;
            let rev = match current {
                Some(table::Record { value: Some(_), .. }) => return Ok(false),
                Some(r) => r.rev,
                None => 0,
            };
            match s
                .config
                .put(key, Some(value.clone()), Expect::Rev(rev))
                .await
            {
                Ok(_) => return Ok(true),
                // Someone wrote the key meanwhile: look again.
                Err(TableError::Conflict) => continue,
                Err(e) => return Err(e.into_store(s, "write config")),
            }
        }
    }
}

#[async_trait]
impl ConfigStore for NatsStore {
    async fn load(&self) -> StoreResult<ConfigSnapshot> {
        let s = &self.inner;
        let records = s
            .config
            .scan(">")
            .await
            .map_err(|e| e.into_store(s, "load config"))?;
        let mut snapshot = ConfigSnapshot::default();
        for (key, record) in records {
            let Some(value) = record.value else { continue };
            match key.split('.').next() {
                Some("t") => {
                    let t: TenantJson = parse("tenant", &value)?;
                    snapshot.tenants.push(TenantRecord {
                        name: t.name,
                        created_ms: t.created_ms,
                    });
                }
                Some("k") => {
                    let k: KeyJson = parse("key", &value)?;
                    if !k.revoked {
                        snapshot.keys.push(KeyRecord {
                            id: k.id,
                            tenant: k.tenant,
                            hash: k.hash,
                            created_ms: k.created_ms,
                        });
                    }
                }
                Some("r") => {
                    let r: ResourceJson = parse("resource", &value)?;
                    snapshot.resources.push(r.into_resource()?);
                }
                _ => {}
            }
        }
        Ok(snapshot)
    }

    async fn create_tenant(&self, tenant: TenantRecord) -> StoreResult<()> {
        let value = json(&TenantJson {
            name: tenant.name.clone(),
            created_ms: tenant.created_ms,
        })?;
        if self
            .create_key(&format!("t.{}", token(&tenant.name)), value)
            .await?
        {
            Ok(())
        } else {
            Err(StoreError::Conflict(format!("tenant {}", tenant.name)))
        }
    }

    async fn put_key(&self, key: KeyRecord) -> StoreResult<()> {
        let id_key = format!("k.{}", token(&key.id));
        let record = json(&KeyJson {
            id: key.id.clone(),
            tenant: key.tenant.clone(),
            hash: key.hash.clone(),
            created_ms: key.created_ms,
            revoked: false,
        })?;
        if !self.create_key(&id_key, record).await? {
            return Err(StoreError::Conflict(format!("key {}", key.id)));
        }
        let hash_key = format!("h.{}", token(&key.hash));
        if !self
            .create_key(&hash_key, Bytes::from(key.id.clone()))
            .await?
        {
            // The hash is another key's: take the id back.
            let s = &self.inner;
            s.config
                .remove(&id_key)
                .await
                .map_err(|e| e.into_store(s, "write config"))?;
            return Err(StoreError::Conflict(format!("key {}", key.id)));
        }
        Ok(())
    }

    async fn revoke_key(&self, tenant: &str, key_id: &str) -> StoreResult<bool> {
        let s = &self.inner;
        let key = format!("k.{}", token(key_id));
        loop {
            let Some(table::Record {
                rev,
                value: Some(value),
            }) = s
                .config
                .get(&key)
                .await
                .map_err(|e| e.into_store(s, "read config"))?
            else {
                return Ok(false);
            };
            let mut k: KeyJson = parse("key", &value)?;
            if k.tenant != tenant || k.revoked {
                return Ok(false);
            }
            k.revoked = true;
            match s.config.put(&key, Some(json(&k)?), Expect::Rev(rev)).await {
                Ok(_) => return Ok(true),
                Err(TableError::Conflict) => continue,
                Err(e) => return Err(e.into_store(s, "write config")),
            }
        }
    }

    async fn put_resource(&self, resource: Resource) -> StoreResult<()> {
        let s = &self.inner;
        let key = resource_key(&resource.tenant, resource.kind, &resource.name);
        let value = json(&ResourceJson {
            tenant: resource.tenant,
            kind: resource.kind.as_str().to_owned(),
            name: resource.name,
            spec: resource.spec,
            updated_ms: resource.updated_ms,
        })?;
        s.config
            .put(&key, Some(value), Expect::Any)
            .await
            .map_err(|e| e.into_store(s, "write config"))?;
        Ok(())
    }

    async fn delete_resource(
        &self,
        tenant: &str,
        kind: ResourceKind,
        name: &str,
    ) -> StoreResult<bool> {
        let s = &self.inner;
        let key = resource_key(tenant, kind, name);
        loop {
            let Some(table::Record {
                rev,
                value: Some(_),
            }) = s
                .config
                .get(&key)
                .await
                .map_err(|e| e.into_store(s, "read config"))?
            else {
                return Ok(false);
            };
            match s.config.put(&key, None, Expect::Rev(rev)).await {
                Ok(_) => return Ok(true),
                Err(TableError::Conflict) => continue,
                Err(e) => return Err(e.into_store(s, "write config")),
            }
        }
    }

    async fn setting(&self, key: &str) -> StoreResult<Option<String>> {
        let s = &self.inner;
        let record = s
            .config
            .get(&format!("s.{}", token(key)))
            .await
            .map_err(|e| e.into_store(s, "read config"))?;
        match record.and_then(|r| r.value) {
            Some(v) => Ok(Some(parse::<SettingJson>("setting", &v)?.value)),
            None => Ok(None),
        }
    }

    async fn put_setting(&self, key: &str, value: &str) -> StoreResult<()> {
        let s = &self.inner;
        let record = json(&SettingJson {
            key: key.to_owned(),
            value: value.to_owned(),
        })?;
        s.config
            .put(&format!("s.{}", token(key)), Some(record), Expect::Any)
            .await
            .map_err(|e| e.into_store(s, "write config"))?;
        Ok(())
    }

    async fn watch(&self) -> StoreResult<Option<Box<dyn ConfigWatch>>> {
        let s = &self.inner;
        let consumer = s
            .timed(
                "watch config",
                s.config.stream().create_consumer(pull::OrderedConfig {
                    deliver_policy: DeliverPolicy::New,
                    filter_subject: s.config.subject(">"),
                    ..Default::default()
                }),
            )
            .await?;
        let reconnects = s.reconnects.subscribe();
        let messages = s.timed("watch config", consumer.messages()).await?;
        Ok(Some(Box::new(NatsConfigWatch {
            store: self.clone(),
            messages,
            last: None,
            reconnects,
        })))
    }
}

/// A [`ConfigWatch`] on the config stream.
struct NatsConfigWatch {
    store: NatsStore,
    messages: pull::Ordered,
    /// The key and revision of the change `next` returned last.
    last: Option<(String, u64)>,
    /// Changes when the connection is re-established: the ordered consumer
    /// is an ephemeral in-memory one that a restarted server no longer
    /// has, and the client notices only much later, so a reconnect ends
    /// the feed at once (the reader reloads and watches anew).
    reconnects: tokio::sync::watch::Receiver<u64>,
}

#[async_trait]
impl ConfigWatch for NatsConfigWatch {
    async fn next(&mut self) -> StoreResult<ConfigChange> {
        loop {
            let next = tokio::select! {
                next = self.messages.next() => next,
                _ = self.reconnects.changed() => {
                    return Err(StoreError::Unavailable(
                        "NATS: reconnected; the config watch may have missed changes".into(),
                    ));
                }
            };
            let message = match next {
                Some(Ok(m)) => m,
                Some(Err(e)) => return Err(self.store.inner.fail("watch config", e)),
                None => {
                    return Err(StoreError::Unavailable(
                        "NATS: the config watch ended".into(),
                    ));
                }
            };
            let deleted = message
                .headers
                .as_ref()
                .is_some_and(|h| h.get(table::DELETED).is_some());
            let Some(key) = self.store.inner.config.key_of(message.subject.as_str()) else {
                continue;
            };
            if let Some(change) = change(key, deleted, &message.payload)? {
                // Without a revision it can never count as superseded.
                let rev = message
                    .info()
                    .map(|i| i.stream_sequence)
                    .unwrap_or(u64::MAX);
                self.last = Some((key.to_owned(), rev));
                return Ok(change);
            }
        }
    }

    fn superseded(&self) -> bool {
        self.last
            .as_ref()
            .is_some_and(|(key, rev)| self.store.inner.config.written(key) >= *rev)
    }
}

/// The change a write of `key` means (`None`: an internal record).
fn change(key: &str, deleted: bool, value: &[u8]) -> StoreResult<Option<ConfigChange>> {
    let parts: Vec<&str> = key.split('.').collect();
    Ok(match (parts.as_slice(), deleted) {
        (["t", _], false) => {
            let t: TenantJson = parse("tenant", value)?;
            Some(ConfigChange::Tenant(TenantRecord {
                name: t.name,
                created_ms: t.created_ms,
            }))
        }
        (["k", _], false) => {
            let k: KeyJson = parse("key", value)?;
            Some(if k.revoked {
                ConfigChange::KeyRevoked {
                    tenant: k.tenant,
                    id: k.id,
                }
            } else {
                ConfigChange::Key(KeyRecord {
                    id: k.id,
                    tenant: k.tenant,
                    hash: k.hash,
                    created_ms: k.created_ms,
                })
            })
        }
        (["r", ..], false) => Some(ConfigChange::Resource(
            parse::<ResourceJson>("resource", value)?.into_resource()?,
        )),
        (["r", tenant, kind, name], true) => {
            let (Some(tenant), Some(kind), Some(name)) = (
                untoken(tenant),
                untoken(kind).as_deref().and_then(ResourceKind::parse),
                untoken(name),
            ) else {
                return Ok(None);
            };
            Some(ConfigChange::ResourceDeleted { tenant, kind, name })
        }
        (["s", _], false) => {
            let s: SettingJson = parse("setting", value)?;
            Some(ConfigChange::Setting {
                key: s.key,
                value: s.value,
            })
        }
        _ => None,
    })
}
