//! KeyValue: typed calls over `prism.keyvalue.v1`. Every write carries an
//! idempotency token made once per logical write, so its retries apply it
//! once; scans are streams that follow the gateway's cursors page by page
//! and resume after the last item they gave when a page fails.

use std::{collections::VecDeque, time::Duration};

use futures::{stream, Stream, StreamExt, TryStreamExt};
use prism_proto::keyvalue::v1::{
    self as pb, key_value_service_client::KeyValueServiceClient, operation::Action,
    precondition::Condition,
};
use tonic::transport::Channel;

use crate::{
    error::{Error, Result},
    idempotency,
    retry::Resend,
    session::Session,
};

/// Items asked for per Scan call (the gateway's default page).
const SCAN_PAGE: u32 = 1000;

/// The KeyValue API of a session: [`Session::kv`].
#[derive(Debug, Clone)]
pub struct KeyValue {
    session: Session,
    stub: KeyValueServiceClient<Channel>,
}

/// A stored value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    /// The bytes stored.
    pub value: Vec<u8>,
    /// The key's version: pass it to [`KeyValue::compare_and_swap`].
    pub version: u64,
    /// Time left before the key expires; `None` when it does not expire
    /// (or, in a batch or scan, when the gateway does not say).
    pub ttl: Option<Duration>,
}

/// What one operation of a [`Transaction`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// A put's new version (0 for a delete).
    pub version: u64,
    /// Whether a delete found the key.
    pub deleted: bool,
}

/// A wire duration from a Rust one, refusing what the wire cannot carry.
pub(crate) fn wire_duration(d: Duration, what: &str) -> Result<prost_types::Duration> {
    prost_types::Duration::try_from(d)
        .map_err(|_| Error::InvalidInput(format!("{what} {d:?} is too large")))
}

fn rust_duration(d: Option<prost_types::Duration>) -> Option<Duration> {
    d.and_then(|d| Duration::try_from(d).ok())
}

impl Session {
    /// The KeyValue API over this session.
    pub fn kv(&self) -> KeyValue {
        KeyValue {
            stub: KeyValueServiceClient::new(self.shared().client.channel.clone()),
            session: self.clone(),
        }
    }
}

impl KeyValue {
    /// The value of `key`, or `None` when it is not set.
    pub async fn get(&self, key: &str) -> Result<Option<Value>> {
        let got = unary!(
            self,
            Resend::Safe,
            get,
            pb::GetRequest {
                session_token: String::new(),
                key: key.to_string(),
            }
        )?;
        Ok(got.found.then(|| Value {
            value: got.value,
            version: got.version,
            ttl: rust_duration(got.ttl),
        }))
    }

    /// Sets `key` (clearing any expiry); returns its new version.
    pub async fn set(&self, key: &str, value: impl Into<Vec<u8>>) -> Result<u64> {
        self.set_request(key, value.into(), None).await
    }

    /// Sets `key` to expire after `ttl`; returns its new version.
    pub async fn set_with_ttl(
        &self,
        key: &str,
        value: impl Into<Vec<u8>>,
        ttl: Duration,
    ) -> Result<u64> {
        let ttl = wire_duration(ttl, "ttl")?;
        self.set_request(key, value.into(), Some(ttl)).await
    }

    async fn set_request(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<prost_types::Duration>,
    ) -> Result<u64> {
        let set = unary!(
            self,
            Resend::Safe,
            set,
            pb::SetRequest {
                session_token: String::new(),
                key: key.to_string(),
                value,
                ttl,
                idempotency_token: Some(idempotency::token()),
            }
        )?;
        Ok(set.version)
    }

    /// Deletes `key`; false when it did not exist.
    pub async fn delete(&self, key: &str) -> Result<bool> {
        let deleted = unary!(
            self,
            Resend::Safe,
            delete,
            pb::DeleteRequest {
                session_token: String::new(),
                key: key.to_string(),
                idempotency_token: Some(idempotency::token()),
            }
        )?;
        Ok(deleted.deleted)
    }

    /// Whether `key` is set.
    pub async fn exists(&self, key: &str) -> Result<bool> {
        let exists = unary!(
            self,
            Resend::Safe,
            exists,
            pb::ExistsRequest {
                session_token: String::new(),
                key: key.to_string(),
            }
        )?;
        Ok(exists.exists)
    }

    /// How many keys start with `prefix` (empty: every key).
    pub async fn count(&self, prefix: &str) -> Result<u64> {
        let counted = unary!(
            self,
            Resend::Safe,
            count,
            pb::CountRequest {
                session_token: String::new(),
                prefix: prefix.to_string(),
            }
        )?;
        Ok(counted.count)
    }

    /// Makes `key` expire `ttl` from now. (Resending it sets the same
    /// expiry again from a later instant: harmless, so it is retried.)
    pub async fn expire(&self, key: &str, ttl: Duration) -> Result<()> {
        let ttl = wire_duration(ttl, "ttl")?;
        unary!(
            self,
            Resend::Safe,
            expire,
            pb::ExpireRequest {
                session_token: String::new(),
                key: key.to_string(),
                ttl: Some(ttl),
            }
        )?;
        Ok(())
    }

    /// Time left before `key` expires; `None` when it does not expire.
    pub async fn ttl(&self, key: &str) -> Result<Option<Duration>> {
        let got = unary!(
            self,
            Resend::Safe,
            get_ttl,
            pb::GetTtlRequest {
                session_token: String::new(),
                key: key.to_string(),
            }
        )?;
        Ok(got.has_ttl.then(|| rust_duration(got.ttl)).flatten())
    }

    /// Removes `key`'s expiry; whether it had one.
    pub async fn persist(&self, key: &str) -> Result<bool> {
        let persisted = unary!(
            self,
            Resend::Safe,
            persist,
            pb::PersistRequest {
                session_token: String::new(),
                key: key.to_string(),
            }
        )?;
        Ok(persisted.had_ttl)
    }

    /// The values of `keys`, in their order (`None` where not set).
    pub async fn batch_get<K: AsRef<str>>(&self, keys: &[K]) -> Result<Vec<Option<Value>>> {
        let got = unary!(
            self,
            Resend::Safe,
            batch_get,
            pb::BatchGetRequest {
                session_token: String::new(),
                keys: keys.iter().map(|k| k.as_ref().to_string()).collect(),
            }
        )?;
        Ok(got
            .items
            .into_iter()
            .map(|i| {
                i.found.then_some(Value {
                    value: i.value,
                    version: i.version,
                    ttl: None,
                })
            })
            .collect())
    }

    /// Sets every `(key, value)` at once; returns the new versions in order.
    pub async fn batch_set<K, V>(
        &self,
        entries: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Vec<u64>>
    where
        K: Into<String>,
        V: Into<Vec<u8>>,
    {
        let entries = entries
            .into_iter()
            .map(|(k, v)| pb::Entry {
                key: k.into(),
                value: v.into(),
                ttl: None,
            })
            .collect();
        let set = unary!(
            self,
            Resend::Safe,
            batch_set,
            pb::BatchSetRequest {
                session_token: String::new(),
                entries,
                idempotency_token: Some(idempotency::token()),
            }
        )?;
        Ok(set.versions)
    }

    /// Deletes `keys`; returns how many existed.
    pub async fn batch_delete<K: AsRef<str>>(&self, keys: &[K]) -> Result<u64> {
        let deleted = unary!(
            self,
            Resend::Safe,
            batch_delete,
            pb::BatchDeleteRequest {
                session_token: String::new(),
                keys: keys.iter().map(|k| k.as_ref().to_string()).collect(),
                idempotency_token: Some(idempotency::token()),
            }
        )?;
        Ok(deleted.deleted)
    }

    /// Sets `key` only if its version is `expected_version` (0: only if it
    /// does not exist); returns the new version. A mismatch fails with
    /// `ABORTED` (reason `PRECONDITION_FAILED`): read the key again and retry.
    pub async fn compare_and_swap(
        &self,
        key: &str,
        expected_version: u64,
        value: impl Into<Vec<u8>>,
    ) -> Result<u64> {
        let swapped = unary!(
            self,
            Resend::Safe,
            compare_and_swap,
            pb::CompareAndSwapRequest {
                session_token: String::new(),
                key: key.to_string(),
                expected_version,
                value: value.into(),
                ttl: None,
                idempotency_token: Some(idempotency::token()),
            }
        )?;
        Ok(swapped.version)
    }

    /// Starts a transaction: every operation applies, or none does.
    pub fn transaction(&self) -> Transaction {
        Transaction {
            kv: self.clone(),
            operations: Vec::new(),
            invalid: None,
        }
    }

    /// Every `(key, value)` whose key starts with `prefix`, in key order,
    /// as a stream that asks for the next page after the last item it gave
    /// (also when a page fails and is retried).
    pub fn scan(
        &self,
        prefix: &str,
    ) -> impl Stream<Item = Result<(String, Value)>> + Send + 'static {
        let kv = self.clone();
        pages(prefix.to_string(), move |prefix, cursor| {
            let kv = kv.clone();
            async move {
                let items = page(&kv, |mut stub, request| {
                    let request = request.map(|()| pb::ScanRequest {
                        session_token: String::new(),
                        prefix: prefix.clone(),
                        limit: SCAN_PAGE,
                        cursor: cursor.clone(),
                    });
                    async move { stub.scan(request).await }
                });
                Ok(items
                    .await?
                    .into_iter()
                    .map(|i| {
                        let value = Value {
                            value: i.value,
                            version: i.version,
                            ttl: None,
                        };
                        (i.cursor, (i.key, value))
                    })
                    .collect())
            }
        })
    }

    /// Every key that starts with `prefix`, in order, following cursors as
    /// [`KeyValue::scan`] does.
    pub fn scan_keys(&self, prefix: &str) -> impl Stream<Item = Result<String>> + Send + 'static {
        let kv = self.clone();
        pages(prefix.to_string(), move |prefix, cursor| {
            let kv = kv.clone();
            async move {
                let keys = page(&kv, |mut stub, request| {
                    let request = request.map(|()| pb::ScanKeysRequest {
                        session_token: String::new(),
                        prefix: prefix.clone(),
                        limit: SCAN_PAGE,
                        cursor: cursor.clone(),
                    });
                    async move { stub.scan_keys(request).await }
                });
                Ok(keys.await?.into_iter().map(|k| (k.cursor, k.key)).collect())
            }
        })
    }
}

/// One Scan-style call (`open` sends it, given a stub and a request that
/// carries the session's token) with its streamed items collected, under
/// the session's retry and reopen rules: a page that fails is asked for
/// again from the same cursor.
async fn page<T, F, Fut>(kv: &KeyValue, open: F) -> Result<Vec<T>>
where
    F: Fn(KeyValueServiceClient<Channel>, tonic::Request<()>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>>,
{
    let shared = kv.session.shared();
    shared
        .call(Resend::Safe, |token| {
            let opened = open(kv.stub.clone(), shared.stream_request(&token, ()));
            async move {
                let mut items = opened.await?.into_inner();
                let mut page = Vec::new();
                while let Some(item) = items.message().await? {
                    page.push(item);
                }
                Ok(tonic::Response::new(page))
            }
        })
        .await
}

/// A stream over pages of `(cursor, item)`: fetches the first page, gives
/// its items, and fetches the next after the last cursor until a page
/// comes back short of [`SCAN_PAGE`].
fn pages<T, F, Fut>(prefix: String, fetch: F) -> impl Stream<Item = Result<T>> + Send + 'static
where
    T: Send + 'static,
    F: Fn(String, String) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<Vec<(String, T)>>> + Send + 'static,
{
    let start = (Some(String::new()), fetch);
    stream::try_unfold(start, move |(cursor, fetch)| {
        let prefix = prefix.clone();
        async move {
            let Some(cursor) = cursor else {
                return Ok::<_, Error>(None);
            };
            let page = fetch(prefix, cursor).await?;
            let full = page.len() >= SCAN_PAGE as usize;
            let next = page.last().map(|(c, _)| c.clone()).filter(|_| full);
            let items: VecDeque<T> = page.into_iter().map(|(_, item)| item).collect();
            Ok(Some((items, (next, fetch))))
        }
    })
    .map_ok(|items| stream::iter(items.into_iter().map(Ok)))
    .try_flatten()
    .boxed()
}

/// KeyValue operations that apply together or not at all: built with
/// [`KeyValue::transaction`], sent by [`Transaction::commit`].
#[derive(Debug)]
#[must_use = "a transaction does nothing until committed"]
pub struct Transaction {
    kv: KeyValue,
    operations: Vec<pb::Operation>,
    /// The first invalid input, reported by `commit`.
    invalid: Option<String>,
}

impl Transaction {
    fn push(mut self, key: &str, action: Action) -> Self {
        self.operations.push(pb::Operation {
            key: key.to_string(),
            action: Some(action),
            precondition: None,
        });
        self
    }

    /// Sets `key`.
    pub fn put(self, key: &str, value: impl Into<Vec<u8>>) -> Self {
        self.push(
            key,
            Action::Put(pb::Put {
                value: value.into(),
                ttl: None,
            }),
        )
    }

    /// Sets `key` to expire after `ttl`.
    pub fn put_with_ttl(mut self, key: &str, value: impl Into<Vec<u8>>, ttl: Duration) -> Self {
        let ttl = match wire_duration(ttl, "ttl") {
            Ok(ttl) => Some(ttl),
            Err(e) => {
                self.invalid.get_or_insert(e.to_string());
                None
            }
        };
        self.push(
            key,
            Action::Put(pb::Put {
                value: value.into(),
                ttl,
            }),
        )
    }

    /// Deletes `key`.
    pub fn delete(self, key: &str) -> Self {
        self.push(key, Action::Delete(pb::Remove {}))
    }

    /// The previous operation applies only if its key is at `version` (0:
    /// does not exist); otherwise the transaction fails with
    /// `ABORTED` (reason `PRECONDITION_FAILED`) and changes nothing.
    pub fn if_version(self, version: u64) -> Self {
        self.condition(Condition::Version(version))
    }

    /// The previous operation applies only if its key exists (`true`) or
    /// does not (`false`).
    pub fn if_exists(self, exists: bool) -> Self {
        self.condition(Condition::Exists(exists))
    }

    fn condition(mut self, condition: Condition) -> Self {
        match self.operations.last_mut() {
            Some(op) => {
                op.precondition = Some(pb::Precondition {
                    condition: Some(condition),
                })
            }
            None => {
                self.invalid
                    .get_or_insert("a condition needs an operation before it".into());
            }
        }
        self
    }

    /// Applies the operations together; what each did, in order.
    pub async fn commit(self) -> Result<Vec<Applied>> {
        if let Some(invalid) = self.invalid {
            return Err(Error::InvalidInput(invalid));
        }
        let done = unary!(
            self.kv,
            Resend::Safe,
            transaction,
            pb::TransactionRequest {
                session_token: String::new(),
                operations: self.operations,
                idempotency_token: Some(idempotency::token()),
            }
        )?;
        Ok(done
            .results
            .into_iter()
            .map(|r| Applied {
                version: r.version,
                deleted: r.deleted,
            })
            .collect())
    }
}
