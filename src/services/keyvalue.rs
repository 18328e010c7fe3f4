//! `prism.keyvalue.v1.KeyValueService`: checks the session on the registry's
//! hot path, validates the request against the configured limits, finds the
//! session's backend and the thin interface the call needs (UNIMPLEMENTED
//! naming both when it is missing) and calls it directly — no actor sits on
//! the data path. Keys are always scoped to the session's namespace.

use std::{future::Future, sync::Arc, time::Duration};

use futures::{future::BoxFuture, StreamExt as _};
use prost::Message as _;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::{
    backends::{
        kv::{
            Action, Applied, Idempotency, KeyValueBatch, KvHandle, Precondition, Record, ScanItem,
            WriteBatch, WriteOp,
        },
        Interface,
    },
    config::{Limits, Pattern},
    error::{Error, ErrorKind, Service},
    gate::{self, Gate, GateState, GatedStream, Kind},
    proto::keyvalue::v1::{self as pb, key_value_service_server::KeyValueService},
};

use super::{
    keys::{check_key, check_keys, check_value, required_ttl},
    kv_cache::{Change, KvCaches, Pending},
};

/// Most items one Scan or ScanKeys call streams.
const MAX_SCAN_LIMIT: u32 = 10_000;
const DEFAULT_SCAN_LIMIT: u32 = 1_000;
/// Clock skew tolerated on an idempotency token's generation time.
const TOKEN_SKEW: Duration = Duration::from_secs(300);

pub struct KeyValueApi {
    gate: Gate<KvHandle>,
    /// The caches in front of cached configs; every write tells them.
    caches: Arc<KvCaches>,
}

type Call = gate::Call<KvHandle>;

gate::session_token_field!(
    pb::SetRequest,
    pb::GetRequest,
    pb::DeleteRequest,
    pb::ExistsRequest,
    pb::ScanRequest,
    pb::ScanKeysRequest,
    pb::CountRequest,
    pb::ExpireRequest,
    pb::GetTtlRequest,
    pb::PersistRequest,
    pb::BatchGetRequest,
    pb::BatchSetRequest,
    pb::BatchDeleteRequest,
    pb::CompareAndSwapRequest,
    pb::TransactionRequest
);

impl KeyValueApi {
    pub fn new(gates: &GateState, caches: Arc<KvCaches>) -> Self {
        KeyValueApi {
            gate: gates.gate(
                Service::KeyValue,
                Pattern::KeyValue,
                Interface::KeyValueBasic,
                |b| b.kv.as_ref(),
            ),
            caches,
        }
    }

    /// Runs a write and tells the caches what it did. Without a cache on
    /// the call's backend and namespace that is just `work` (and a check
    /// that a reload did not add one meanwhile); with one, the keys'
    /// tickets are taken first (`pending`, from [`KvCaches::prepare`]) and
    /// `work` runs in a task of its own to the end, so a client that goes
    /// away mid-call cannot leave a written key cached, here or on another
    /// instance. Such tasks are bounded ([`KvCaches::detached`]).
    async fn write<T: Send + 'static>(
        &self,
        call: &Call,
        keys: Vec<String>,
        pending: Option<Pending>,
        work: impl Future<Output = Result<T, Error>> + Send + 'static,
        changes: impl FnOnce(&Result<T, Error>, Vec<String>) -> Vec<Change> + Send + 'static,
    ) -> Result<T, Error> {
        let Some(pending) = pending else {
            let outcome = work.await;
            if self.caches.watch(&call.backend.name, call.ns()) {
                let pending = KvCaches::unprepared(&call.backend.name, call.ns());
                let changes = keys.into_iter().map(Change::Gone).collect();
                self.caches.wrote(pending, changes).await;
            }
            return outcome;
        };
        let permit = self.caches.detached().await;
        let caches = self.caches.clone();
        let task = tokio::spawn(
            async move {
                let outcome = work.await;
                let changes = changes(&outcome, keys);
                caches.wrote(pending, changes).await;
                drop(permit);
                outcome
            }
            .in_current_span(),
        );
        task.await
            .unwrap_or_else(|_| Err(Error::internal("the write's task ended before it answered")))
    }

    /// [`Self::write`] of a batch: a put that applied is a new record, any
    /// other op or outcome only drops the key.
    async fn write_batch(
        &self,
        call: &Call,
        batch: WriteBatch,
        apply: impl FnOnce(String, WriteBatch) -> BoxFuture<'static, Result<Applied, Error>>,
    ) -> Result<Applied, Error> {
        let keys: Vec<String> = batch.ops.iter().map(|o| o.key.clone()).collect();
        let pending = self.caches.prepare(
            &call.backend.name,
            call.ns(),
            keys.iter().map(String::as_str),
        );
        // The values are copied only for a cache that keeps them.
        let ops = pending
            .as_ref()
            .filter(|p| p.wants_values())
            .map(|_| batch.ops.clone());
        let work = apply(call.ns().to_string(), batch);
        self.write(call, keys, pending, work, move |outcome, keys| {
            let versions = match outcome {
                Ok(a) if !a.replayed => Some(&a.results),
                _ => None,
            };
            let ops = ops.unwrap_or_default();
            keys.into_iter()
                .enumerate()
                .map(|(i, key)| {
                    match (
                        ops.get(i).map(|o| &o.action),
                        versions.and_then(|v| v.get(i)),
                    ) {
                        (Some(Action::Put { value, ttl }), Some(version)) => Change::Put {
                            key,
                            record: Record {
                                value: value.clone(),
                                version: *version,
                                ttl: *ttl,
                            },
                        },
                        _ => Change::Gone(key),
                    }
                })
                .collect()
        })
        .await
    }

    /// [`Self::write`] of a call that changes one key in a way only the
    /// backend knows (its expiry).
    async fn touch<T: Send + 'static>(
        &self,
        call: &Call,
        key: &str,
        work: impl Future<Output = Result<T, Error>> + Send + 'static,
    ) -> Result<T, Error> {
        let pending = self
            .caches
            .prepare(&call.backend.name, call.ns(), std::iter::once(key));
        self.write(call, vec![key.to_string()], pending, work, |_, keys| {
            keys.into_iter().map(Change::Gone).collect()
        })
        .await
    }

    /// Many keys: those cached from the cache, the rest from the backend
    /// in one call (then cached).
    async fn batch_read(
        &self,
        call: &Call,
        batch: &dyn KeyValueBatch,
        keys: &[String],
    ) -> Result<Vec<Option<Record>>, Error> {
        let Some(cache) = self.caches.of(&call.entry.config) else {
            return batch.batch_get(call.ns(), keys).await;
        };
        let mut records: Vec<Option<Record>> = keys.iter().map(|k| cache.get(k)).collect();
        let missing: Vec<usize> = (0..keys.len()).filter(|i| records[*i].is_none()).collect();
        if missing.is_empty() {
            return Ok(records);
        }
        let wanted: Vec<String> = missing.iter().map(|i| keys[*i].clone()).collect();
        let tickets: Vec<_> = wanted.iter().map(|k| cache.ticket(k)).collect();
        let read = batch.batch_get(call.ns(), &wanted).await?;
        for ((i, ticket), r) in missing.into_iter().zip(tickets).zip(read) {
            if let Some(r) = &r {
                cache.fill(&keys[i], ticket, r);
            }
            records[i] = r;
        }
        Ok(records)
    }

    /// A TTL from the wire: present means positive.
    fn ttl(
        &self,
        call: &Call,
        ttl: Option<&prost_types::Duration>,
    ) -> Result<Option<Duration>, Error> {
        let Some(d) = ttl else {
            return Ok(None);
        };
        call.need(Interface::KeyValueTtl, |kv| kv.ttl.as_ref())?;
        positive_duration(d).map(Some)
    }

    fn idempotency(
        &self,
        limits: &Limits,
        token: Option<&pb::IdempotencyToken>,
        rpc: &str,
        fingerprint: impl FnOnce() -> Vec<u8>,
    ) -> Result<Option<Idempotency>, Error> {
        let Some(token) = token else {
            return Ok(None);
        };
        if token.id.is_empty() || token.id.len() > 128 {
            return Err(Error::invalid_argument(
                "INVALID_IDEMPOTENCY_TOKEN",
                "idempotency_token.id must be 1 to 128 bytes (a UUID, say)",
            ));
        }
        let generated = token
            .generated_at
            .and_then(|t| std::time::SystemTime::try_from(t).ok())
            .ok_or_else(|| {
                Error::invalid_argument(
                    "INVALID_IDEMPOTENCY_TOKEN",
                    "idempotency_token.generated_at is missing or invalid; set it to the time the \
                     client created the token",
                )
            })?;
        let now = std::time::SystemTime::now();
        let window = limits.idempotency_window;
        match now.duration_since(generated) {
            Ok(age) if age > window => {
                return Err(Error::invalid_argument(
                    "IDEMPOTENCY_TOKEN_EXPIRED",
                    format!(
                        "idempotency token is {} old; tokens are honoured for {} \
                         (limits.idempotency_window): generate a new one",
                        humantime::format_duration(Duration::from_secs(age.as_secs())),
                        humantime::format_duration(window)
                    ),
                ))
            }
            Err(ahead) if ahead.duration() > TOKEN_SKEW => {
                return Err(Error::invalid_argument(
                    "IDEMPOTENCY_TOKEN_IN_FUTURE",
                    "idempotency_token.generated_at is more than 5 minutes ahead of the gateway's \
                     clock; check the client's clock",
                ))
            }
            _ => {}
        }
        let mut hasher = Sha256::new();
        hasher.update(rpc.as_bytes());
        hasher.update([0]);
        hasher.update(fingerprint());
        Ok(Some(Idempotency {
            id: token.id.clone(),
            fingerprint: hex::encode(hasher.finalize()),
            retain: window + TOKEN_SKEW,
        }))
    }

    /// A transaction operation from the wire.
    fn operation(&self, call: &Call, index: usize, o: &pb::Operation) -> Result<WriteOp, Error> {
        let precondition = match o.precondition.as_ref().and_then(|p| p.condition) {
            None => None,
            Some(pb::precondition::Condition::Version(v)) => Some(Precondition::Version(v)),
            Some(pb::precondition::Condition::Exists(e)) => Some(Precondition::Exists(e)),
        };
        let action = match &o.action {
            Some(pb::operation::Action::Put(p)) => {
                check_value(call.limits(), &o.key, &p.value)?;
                Action::Put {
                    value: p.value.clone(),
                    ttl: self.ttl(call, p.ttl.as_ref())?,
                }
            }
            Some(pb::operation::Action::Delete(_)) => Action::Delete,
            None => {
                return Err(Error::invalid_argument(
                    "INVALID_OPERATION",
                    format!("operation {index} has no action; set put or delete"),
                ))
            }
        };
        Ok(WriteOp {
            key: o.key.clone(),
            action,
            precondition,
        })
    }

    /// Streams a scan a chunk at a time: the next chunk is fetched only
    /// when the client has taken the previous one.
    fn stream_scan<T: prost::Message + 'static>(
        &self,
        call: Call,
        prefix: String,
        cursor: String,
        limit: u32,
        keys_only: bool,
        map: fn(ScanItem) -> T,
    ) -> Result<GatedStream<T>, Status> {
        let scan = call
            .need(Interface::KeyValueScan, |kv| kv.scan.as_ref())
            .map_err(|e| call.fail(e))?;
        if limit > MAX_SCAN_LIMIT {
            return Err(call.fail(Error::invalid_argument(
                "INVALID_LIMIT",
                format!("limit is {limit}; the most one call streams is {MAX_SCAN_LIMIT}"),
            )));
        }
        let remaining = if limit == 0 {
            DEFAULT_SCAN_LIMIT
        } else {
            limit
        } as usize;
        let chunk = if keys_only { 512 } else { 16 };
        let source = ScanSource {
            scan,
            ns: call.ns().to_string(),
            prefix,
            cursor,
            keys_only,
        };
        let items = super::chunked(source, remaining, chunk).map(move |r| r.map(map));
        Ok(call.stream(items))
    }
}

/// What Scan and ScanKeys stream: a namespace's keys from a cursor on,
/// read a chunk at a time (see [`super::chunked`]).
struct ScanSource {
    scan: Arc<dyn crate::backends::kv::KeyValueScan>,
    ns: String,
    prefix: String,
    cursor: String,
    keys_only: bool,
}

#[tonic::async_trait]
impl super::Chunks for ScanSource {
    type Item = ScanItem;

    async fn next_chunk(&mut self, want: usize) -> Result<Vec<ScanItem>, Error> {
        let page = self
            .scan
            .scan(&self.ns, &self.prefix, &self.cursor, want, self.keys_only)
            .await?;
        if let Some(last) = page.items.last() {
            self.cursor = last.cursor.clone();
        }
        Ok(page.items)
    }
}

use super::keys::positive_duration;

fn put(
    key: &str,
    value: Vec<u8>,
    ttl: Option<Duration>,
    precondition: Option<Precondition>,
) -> WriteOp {
    WriteOp {
        key: key.to_string(),
        action: Action::Put { value, ttl },
        precondition,
    }
}

fn delete(key: &str) -> WriteOp {
    WriteOp {
        key: key.to_string(),
        action: Action::Delete,
        precondition: None,
    }
}

fn not_found(key: &str) -> Error {
    Error::new(
        ErrorKind::NotFound,
        "KEY_NOT_FOUND",
        format!("key `{key}` does not exist (or has expired)"),
    )
    .with("key", key)
}

/// The request without its session token and idempotency token, encoded:
/// what an idempotency token's fingerprint covers.
macro_rules! fingerprint {
    ($req:expr) => {{
        let mut copy = $req.clone();
        copy.session_token.clear();
        copy.idempotency_token = None;
        copy.encode_to_vec()
    }};
}

fn first(applied: &Applied) -> Result<u64, Error> {
    applied
        .results
        .first()
        .copied()
        .ok_or_else(|| Error::internal("the backend returned no outcome"))
}

#[tonic::async_trait]
impl KeyValueService for KeyValueApi {
    async fn set(
        &self,
        request: Request<pb::SetRequest>,
    ) -> Result<Response<pb::SetResponse>, Status> {
        self.gate
            .unary(request, async |call, req| {
                check_key(call.limits(), &req.key)?;
                check_value(call.limits(), &req.key, &req.value)?;
                let ttl = self.ttl(call, req.ttl.as_ref())?;
                let idem =
                    self.idempotency(call.limits(), req.idempotency_token.as_ref(), "Set", || {
                        fingerprint!(req)
                    })?;
                let batch = WriteBatch::single(put(&req.key, req.value.clone(), ttl, None), idem);
                let basic = call.handle.basic.clone();
                let applied = self
                    .write_batch(call, batch, |ns, b| {
                        Box::pin(async move { basic.write(&ns, b).await })
                    })
                    .await?;
                Ok(pb::SetResponse {
                    version: first(&applied)?,
                    replayed: applied.replayed,
                })
            })
            .await
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        self.gate
            .unary(request, async |call, req| {
                check_key(call.limits(), &req.key)?;
                let record = match self.caches.of(&call.entry.config) {
                    None => call.handle.basic.get(call.ns(), &req.key).await?,
                    Some(cache) => match cache.get(&req.key) {
                        Some(hit) => Some(hit),
                        None => {
                            let ticket = cache.ticket(&req.key);
                            let read = call.handle.basic.get(call.ns(), &req.key).await?;
                            if let Some(r) = &read {
                                cache.fill(&req.key, ticket, r);
                            }
                            read
                        }
                    },
                };
                Ok(match record {
                    Some(r) => pb::GetResponse {
                        found: true,
                        value: r.value,
                        version: r.version,
                        ttl: r.ttl.map(crate::clock::duration_to_proto),
                    },
                    None => pb::GetResponse::default(),
                })
            })
            .await
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        self.gate
            .unary(request, async |call, req| {
                check_key(call.limits(), &req.key)?;
                let idem = self.idempotency(
                    call.limits(),
                    req.idempotency_token.as_ref(),
                    "Delete",
                    || fingerprint!(req),
                )?;
                let batch = WriteBatch::single(delete(&req.key), idem);
                let basic = call.handle.basic.clone();
                let applied = self
                    .write_batch(call, batch, |ns, b| {
                        Box::pin(async move { basic.write(&ns, b).await })
                    })
                    .await?;
                Ok(pb::DeleteResponse {
                    deleted: first(&applied)? == 1,
                    replayed: applied.replayed,
                })
            })
            .await
    }

    async fn exists(
        &self,
        request: Request<pb::ExistsRequest>,
    ) -> Result<Response<pb::ExistsResponse>, Status> {
        self.gate
            .unary(request, async |call, req| {
                check_key(call.limits(), &req.key)?;
                let cached = self
                    .caches
                    .of(&call.entry.config)
                    .is_some_and(|c| c.contains(&req.key));
                let exists = cached || call.handle.basic.exists(call.ns(), &req.key).await?;
                Ok(pb::ExistsResponse { exists })
            })
            .await
    }

    type ScanStream = GatedStream<pb::ScanResponse>;

    async fn scan(
        &self,
        request: Request<pb::ScanRequest>,
    ) -> Result<Response<Self::ScanStream>, Status> {
        let call = self.gate.open(&request, Kind::Stream).await?;
        let req = request.into_inner();
        let stream = self.stream_scan(call, req.prefix, req.cursor, req.limit, false, |i| {
            pb::ScanResponse {
                key: i.key,
                value: i.value,
                version: i.version,
                cursor: i.cursor,
            }
        })?;
        Ok(Response::new(stream))
    }

    type ScanKeysStream = GatedStream<pb::KeyResponse>;

    async fn scan_keys(
        &self,
        request: Request<pb::ScanKeysRequest>,
    ) -> Result<Response<Self::ScanKeysStream>, Status> {
        let call = self.gate.open(&request, Kind::Stream).await?;
        let req = request.into_inner();
        let stream = self.stream_scan(call, req.prefix, req.cursor, req.limit, true, |i| {
            pb::KeyResponse {
                key: i.key,
                cursor: i.cursor,
            }
        })?;
        Ok(Response::new(stream))
    }

    async fn count(
        &self,
        request: Request<pb::CountRequest>,
    ) -> Result<Response<pb::CountResponse>, Status> {
        self.gate
            .unary(request, async |call, req| {
                let scan = call.need(Interface::KeyValueScan, |kv| kv.scan.as_ref())?;
                let count = scan.count(call.ns(), &req.prefix).await?;
                Ok(pb::CountResponse { count })
            })
            .await
    }

    async fn expire(
        &self,
        request: Request<pb::ExpireRequest>,
    ) -> Result<Response<pb::ExpireResponse>, Status> {
        self.gate
            .unary(request, async |call, req| {
                let ttl_api = call.need(Interface::KeyValueTtl, |kv| kv.ttl.as_ref())?;
                check_key(call.limits(), &req.key)?;
                let ttl = required_ttl(req.ttl.as_ref(), "to remove an expiry use Persist")?;
                let (ns, key) = (call.ns().to_string(), req.key.clone());
                let work = async move { ttl_api.expire(&ns, &key, ttl).await };
                if self.touch(call, &req.key, work).await? {
                    Ok(pb::ExpireResponse {})
                } else {
                    Err(not_found(&req.key))
                }
            })
            .await
    }

    async fn get_ttl(
        &self,
        request: Request<pb::GetTtlRequest>,
    ) -> Result<Response<pb::GetTtlResponse>, Status> {
        self.gate
            .unary(request, async |call, req| {
                let ttl_api = call.need(Interface::KeyValueTtl, |kv| kv.ttl.as_ref())?;
                check_key(call.limits(), &req.key)?;
                let ttl = ttl_api
                    .ttl(call.ns(), &req.key)
                    .await?
                    .ok_or_else(|| not_found(&req.key))?;
                Ok(pb::GetTtlResponse {
                    has_ttl: ttl.is_some(),
                    ttl: ttl.map(crate::clock::duration_to_proto),
                })
            })
            .await
    }

    async fn persist(
        &self,
        request: Request<pb::PersistRequest>,
    ) -> Result<Response<pb::PersistResponse>, Status> {
        self.gate
            .unary(request, async |call, req| {
                let ttl_api = call.need(Interface::KeyValueTtl, |kv| kv.ttl.as_ref())?;
                check_key(call.limits(), &req.key)?;
                let (ns, key) = (call.ns().to_string(), req.key.clone());
                let work = async move { ttl_api.persist(&ns, &key).await };
                let had_ttl = self
                    .touch(call, &req.key, work)
                    .await?
                    .ok_or_else(|| not_found(&req.key))?;
                Ok(pb::PersistResponse { had_ttl })
            })
            .await
    }

    async fn batch_get(
        &self,
        request: Request<pb::BatchGetRequest>,
    ) -> Result<Response<pb::BatchGetResponse>, Status> {
        self.gate
            .unary(request, async |call, req| {
                let batch = call.need(Interface::KeyValueBatch, |kv| kv.batch.as_ref())?;
                check_keys(call.limits(), req.keys.iter().map(String::as_str))?;
                let records = self.batch_read(call, &*batch, &req.keys).await?;
                // The reply is sized before it is built: one that no
                // client could receive is refused, not encoded.
                let sizes = req.keys.iter().zip(&records);
                super::keys::check_reply(
                    call.limits(),
                    sizes.map(|(key, r)| (key.len(), r.as_ref().map_or(0, |r| r.value.len()))),
                )?;
                let items = req
                    .keys
                    .iter()
                    .zip(records)
                    .map(|(key, r)| match r {
                        Some(r) => pb::Item {
                            key: key.clone(),
                            found: true,
                            value: r.value,
                            version: r.version,
                        },
                        None => pb::Item {
                            key: key.clone(),
                            ..Default::default()
                        },
                    })
                    .collect();
                Ok(pb::BatchGetResponse { items })
            })
            .await
    }

    async fn batch_set(
        &self,
        request: Request<pb::BatchSetRequest>,
    ) -> Result<Response<pb::BatchSetResponse>, Status> {
        self.gate
            .unary(request, async |call, req| {
                let batch_api = call.need(Interface::KeyValueBatch, |kv| kv.batch.as_ref())?;
                check_keys(call.limits(), req.entries.iter().map(|e| e.key.as_str()))?;
                let mut ops = Vec::with_capacity(req.entries.len());
                for e in &req.entries {
                    check_value(call.limits(), &e.key, &e.value)?;
                    let ttl = self.ttl(call, e.ttl.as_ref())?;
                    ops.push(put(&e.key, e.value.clone(), ttl, None));
                }
                let idempotency = self.idempotency(
                    call.limits(),
                    req.idempotency_token.as_ref(),
                    "BatchSet",
                    || fingerprint!(req),
                )?;
                let applied = self
                    .write_batch(call, WriteBatch { ops, idempotency }, |ns, b| {
                        Box::pin(async move { batch_api.batch_write(&ns, b).await })
                    })
                    .await?;
                Ok(pb::BatchSetResponse {
                    versions: applied.results,
                    replayed: applied.replayed,
                })
            })
            .await
    }

    async fn batch_delete(
        &self,
        request: Request<pb::BatchDeleteRequest>,
    ) -> Result<Response<pb::BatchDeleteResponse>, Status> {
        self.gate
            .unary(request, async |call, req| {
                let batch_api = call.need(Interface::KeyValueBatch, |kv| kv.batch.as_ref())?;
                check_keys(call.limits(), req.keys.iter().map(String::as_str))?;
                let ops = req.keys.iter().map(|k| delete(k)).collect();
                let idempotency = self.idempotency(
                    call.limits(),
                    req.idempotency_token.as_ref(),
                    "BatchDelete",
                    || fingerprint!(req),
                )?;
                let applied = self
                    .write_batch(call, WriteBatch { ops, idempotency }, |ns, b| {
                        Box::pin(async move { batch_api.batch_write(&ns, b).await })
                    })
                    .await?;
                Ok(pb::BatchDeleteResponse {
                    deleted: applied.results.iter().sum(),
                    replayed: applied.replayed,
                })
            })
            .await
    }

    async fn compare_and_swap(
        &self,
        request: Request<pb::CompareAndSwapRequest>,
    ) -> Result<Response<pb::CompareAndSwapResponse>, Status> {
        self.gate
            .unary(request, async |call, req| {
                let cas = call.need(Interface::KeyValueCas, |kv| kv.cas.as_ref())?;
                check_key(call.limits(), &req.key)?;
                check_value(call.limits(), &req.key, &req.value)?;
                let ttl = self.ttl(call, req.ttl.as_ref())?;
                let idem = self.idempotency(
                    call.limits(),
                    req.idempotency_token.as_ref(),
                    "CompareAndSwap",
                    || fingerprint!(req),
                )?;
                let expected = Some(Precondition::Version(req.expected_version));
                let op = put(&req.key, req.value.clone(), ttl, expected);
                let applied = self
                    .write_batch(call, WriteBatch::single(op, idem), |ns, b| {
                        Box::pin(async move { cas.compare_and_swap(&ns, b).await })
                    })
                    .await?;
                Ok(pb::CompareAndSwapResponse {
                    version: first(&applied)?,
                    replayed: applied.replayed,
                })
            })
            .await
    }

    async fn transaction(
        &self,
        request: Request<pb::TransactionRequest>,
    ) -> Result<Response<pb::TransactionResponse>, Status> {
        self.gate
            .unary(request, async |call, req| {
                let txn = call.need(Interface::KeyValueTransactional, |kv| {
                    kv.transactional.as_ref()
                })?;
                check_keys(call.limits(), req.operations.iter().map(|o| o.key.as_str()))?;
                let mut ops = Vec::with_capacity(req.operations.len());
                for (index, o) in req.operations.iter().enumerate() {
                    ops.push(self.operation(call, index, o)?);
                }
                let idempotency = self.idempotency(
                    call.limits(),
                    req.idempotency_token.as_ref(),
                    "Transaction",
                    || fingerprint!(req),
                )?;
                let applied = self
                    .write_batch(call, WriteBatch { ops, idempotency }, |ns, b| {
                        Box::pin(async move { txn.transact(&ns, b).await })
                    })
                    .await?;
                let results = req
                    .operations
                    .iter()
                    .zip(&applied.results)
                    .map(|(o, r)| match o.action {
                        Some(pb::operation::Action::Put(_)) => pb::OperationResult {
                            version: *r,
                            deleted: false,
                        },
                        _ => pb::OperationResult {
                            version: 0,
                            deleted: *r == 1,
                        },
                    })
                    .collect();
                Ok(pb::TransactionResponse {
                    results,
                    replayed: applied.replayed,
                })
            })
            .await
    }
}
