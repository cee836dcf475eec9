//! A small key/value table on a stream, with compare-and-set.
//!
//! What a JetStream KV bucket is, minus what would hurt here: each key is a
//! subject (`<prefix>.<table>.<key tokens>`), the stream keeps one message
//! per subject (the current value), a write can require the key's current
//! revision (`Nats-Expected-Last-Subject-Sequence`; revision = stream
//! sequence, 0 = never written), and reads go to the stream leader (the
//! "MSG.GET" API rather than direct gets, which a follower may answer from
//! behind the latest write). A deletion is a tombstone — a message with a
//! `Busbar-Deleted` header — so watchers see it; [`Table::remove`] purges a
//! key instead where nobody watches.

use super::{NatsOptions, StoreError};
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// The header that marks a tombstone.
pub(super) const DELETED: &str = "Busbar-Deleted";

/// A key/value table.
#[derive(Debug)]
pub(crate) struct Table {
    stream: super::JsStream,
    js: jetstream::Context,
    /// `<prefix>.<table>`.
    base: String,
    timeout: Duration,
    /// With [`Table::track_writes`]: key → revision of this handle's latest
    /// write of it.
    written: Option<Mutex<HashMap<String, u64>>>,
}

/// A key's current state.
#[derive(Clone, Debug)]
pub(crate) struct Record {
    /// The revision to present for a compare-and-set.
    pub(crate) rev: u64,
    /// The value; `None` for a tombstone.
    pub(crate) value: Option<Bytes>,
}

/// What a write requires of the key's current state.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Expect {
    /// Nothing.
    Any,
    /// This revision (0: the key was never written).
    Rev(u64),
}

/// A failed table operation.
#[derive(Debug)]
pub(crate) enum TableError {
    /// The key's revision was not the expected one.
    Conflict,
    /// Anything else (the message says what).
    Other(String),
}

impl Table {
    /// Creates (or updates) the table's stream `<PREFIX>_<NAME>`.
    pub(super) async fn open(
        js: &jetstream::Context,
        options: &NatsOptions,
        sub: &str,
        name: &str,
        table: &str,
    ) -> Result<Self, String> {
        let config = stream::Config {
            name: format!("{}_{name}", options.prefix),
            subjects: vec![format!("{sub}.{table}.>")],
            num_replicas: options.replicas,
            max_messages_per_subject: 1,
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        };
        super::ensure_stream(js, &config, options.request_timeout * 2).await?;
        let stream = js
            .get_stream_no_info(&config.name)
            .await
            .map_err(|e| format!("stream {}: {e}", config.name))?;
        Ok(Self {
            stream,
            js: js.clone(),
            base: format!("{sub}.{table}"),
            timeout: options.request_timeout * 2,
            written: None,
        })
    }

    /// Remembers the revision of every write through this handle, for
    /// [`Table::written`] (a table with few keys: one entry per key written).
    pub(crate) fn track_writes(mut self) -> Self {
        self.written = Some(Mutex::default());
        self
    }

    /// The revision of this handle's latest write of `key` (0: none, or not tracked).
    pub(crate) fn written(&self, key: &str) -> u64 {
        self.written.as_ref().map_or(0, |w| {
            w.lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(key)
                .copied()
                .unwrap_or(0)
        })
    }

    /// The subject of a key (already made of escaped tokens).
    pub(crate) fn subject(&self, key: &str) -> String {
        format!("{}.{key}", self.base)
    }

    /// The key of a subject of this table.
    pub(crate) fn key_of<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject
            .strip_prefix(self.base.as_str())
            .and_then(|rest| rest.strip_prefix('.'))
    }

    /// The key's current record (`None`: never written, or removed).
    pub(crate) async fn get(&self, key: &str) -> Result<Option<Record>, TableError> {
        let get = self
            .stream
            .raw_message_builder()
            .last_by_subject(self.subject(key))
            .send();
        match tokio::time::timeout(self.timeout, get).await {
            Ok(Ok(m)) => Ok(Some(record(&m))),
            Ok(Err(e)) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(None),
            Ok(Err(e)) => Err(TableError::Other(e.to_string())),
            Err(_) => Err(TableError::Other("read timed out".into())),
        }
    }

    /// Writes a value (`None`: a tombstone); returns the new revision.
    pub(crate) async fn put(
        &self,
        key: &str,
        value: Option<Bytes>,
        expect: Expect,
    ) -> Result<u64, TableError> {
        let mut publish = jetstream::message::PublishMessage::build();
        match value {
            Some(v) => publish = publish.payload(v),
            None => publish = publish.header(DELETED, "1"),
        }
        if let Expect::Rev(rev) = expect {
            publish = publish.expected_last_subject_sequence(rev);
        }
        let send = async {
            let ack = self
                .stream_context()
                .send_publish(self.subject(key), publish)
                .await?;
            ack.await
        };
        match tokio::time::timeout(self.timeout, send).await {
            Ok(Ok(ack)) => {
                if let Some(w) = &self.written {
                    let mut w = w.lock().unwrap_or_else(|p| p.into_inner());
                    let rev = w.entry(key.to_owned()).or_default();
                    *rev = (*rev).max(ack.sequence);
                }
                Ok(ack.sequence)
            }
            // A cluster may answer with another error code (10164, not
            // 10071) that async-nats does not map to `WrongLastSequence`.
            Ok(Err(e))
                if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence
                    || e.to_string().contains("wrong last sequence") =>
            {
                Err(TableError::Conflict)
            }
            Ok(Err(e)) => Err(TableError::Other(e.to_string())),
            Err(_) => Err(TableError::Other("write timed out".into())),
        }
    }

    /// Removes every key under `prefix` (or the key itself) without a tombstone.
    pub(crate) async fn remove(&self, key_or_prefix: &str) -> Result<(), TableError> {
        let purge = self
            .stream
            .purge()
            .filter(self.subject(key_or_prefix))
            .into_future();
        match tokio::time::timeout(self.timeout, purge).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(TableError::Other(e.to_string())),
            Err(_) => Err(TableError::Other("purge timed out".into())),
        }
    }

    /// Every live key under `filter` (a key pattern, e.g. `r.>`) with its
    /// record, in revision order.
    pub(crate) async fn scan(&self, filter: &str) -> Result<Vec<(String, Record)>, TableError> {
        let subject = self.subject(filter);
        let mut out = Vec::new();
        let mut seq = 1;
        loop {
            let get = self
                .stream
                .raw_message_builder()
                .sequence(seq)
                .next_by_subject(subject.clone())
                .send();
            let m = match tokio::time::timeout(self.timeout, get).await {
                Ok(Ok(m)) => m,
                Ok(Err(e)) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => {
                    return Ok(out);
                }
                Ok(Err(e)) => return Err(TableError::Other(e.to_string())),
                Err(_) => return Err(TableError::Other("read timed out".into())),
            };
            seq = m.sequence + 1;
            let r = record(&m);
            if r.value.is_some()
                && let Some(key) = self.key_of(m.subject.as_str())
            {
                out.push((key.to_owned(), r));
            }
        }
    }

    /// The stream under the table (for watchers).
    pub(crate) fn stream(&self) -> &super::JsStream {
        &self.stream
    }

    fn stream_context(&self) -> &jetstream::Context {
        &self.js
    }
}

/// The record a stored message holds.
pub(crate) fn record(m: &jetstream::message::StreamMessage) -> Record {
    let deleted = m.headers.get(DELETED).is_some();
    Record {
        rev: m.sequence,
        value: (!deleted).then(|| m.payload.clone()),
    }
}

impl TableError {
    /// As a store error (`Conflict` only where the caller did not expect it).
    pub(crate) fn into_store(self, shared: &super::Shared, what: &str) -> StoreError {
        match self {
            TableError::Conflict => {
                StoreError::Backend(anyhow::anyhow!("{what}: changed concurrently"))
            }
            TableError::Other(e) => shared.fail(what, e),
        }
    }
}

/// A key made of names, each escaped into one token (see [`super::token`]).
pub(crate) fn key(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| super::token(n))
        .collect::<Vec<_>>()
        .join(".")
}

/// A value as JSON bytes.
pub(crate) fn json(value: &impl serde::Serialize) -> Result<Bytes, StoreError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| StoreError::Backend(e.into()))
}

/// A record's value read back from JSON; `None` for a tombstone.
pub(crate) fn parse<T: serde::de::DeserializeOwned>(
    record: &Record,
) -> Result<Option<T>, StoreError> {
    record
        .value
        .as_ref()
        .map(|v| {
            serde_json::from_slice(v)
                .map_err(|e| StoreError::Backend(anyhow::anyhow!("stored record: {e}")))
        })
        .transpose()
}
