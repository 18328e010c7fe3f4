//! `prism.cache.v1.CacheService` (seed 002 §14): a session's cache entries
//! on its backend's Cache interfaces — `cache_basic` for Get, Set, Delete,
//! GetMulti, Exists and SetEx, `cache_counters` for Increment. Every call
//! passes the gate like the other data services; keys and values are held
//! to the same `limits` as KeyValue's; a Set without a ttl takes the
//! config's `cache.ttl`. Keys are always scoped to the session's namespace.

use std::time::Duration;

use tonic::{Request, Response, Status};

use super::keys::{
    check_key, check_keys, check_reply, check_value, positive_duration, required_ttl,
};
use crate::{
    backends::{cache::CacheHandle, Interface},
    config::Pattern,
    error::{Error, Service},
    gate::{self, Gate, GateState},
    proto::cache::v1::{self as pb, cache_service_server::CacheService},
};

pub struct CacheApi {
    gate: Gate<CacheHandle>,
}

type Call = gate::Call<CacheHandle>;

gate::session_token_field!(
    pb::GetRequest,
    pb::SetRequest,
    pb::DeleteRequest,
    pb::GetMultiRequest,
    pb::ExistsRequest,
    pb::SetExRequest,
    pb::IncrementRequest
);

impl CacheApi {
    pub fn new(gates: &GateState) -> Self {
        CacheApi {
            gate: gates.gate(Service::Cache, Pattern::Cache, Interface::CacheBasic, |b| {
                b.cache.as_ref()
            }),
        }
    }

    /// The expiry of a write: the request's, else the config's `cache.ttl`.
    fn ttl(call: &Call, ttl: Option<&prost_types::Duration>) -> Result<Option<Duration>, Error> {
        match ttl {
            Some(d) => positive_duration(d).map(Some),
            None => Ok(call.entry.config.cache_ttl),
        }
    }

    async fn store(
        &self,
        call: &Call,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<(), Error> {
        check_key(call.limits(), key)?;
        check_value(call.limits(), key, &value)?;
        call.handle.basic.set(call.ns(), key, value, ttl).await
    }
}

#[tonic::async_trait]
impl CacheService for CacheApi {
    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        self.gate
            .unary(request, async |call, req| {
                check_key(call.limits(), &req.key)?;
                Ok(match call.handle.basic.get(call.ns(), &req.key).await? {
                    Some(c) => pb::GetResponse {
                        found: true,
                        value: c.value,
                        ttl: c.ttl.map(crate::clock::duration_to_proto),
                    },
                    None => pb::GetResponse::default(),
                })
            })
            .await
    }

    async fn set(
        &self,
        request: Request<pb::SetRequest>,
    ) -> Result<Response<pb::SetResponse>, Status> {
        self.gate
            .unary(request, async |call, req| {
                let ttl = Self::ttl(call, req.ttl.as_ref())?;
                self.store(call, &req.key, req.value, ttl).await?;
                Ok(pb::SetResponse {})
            })
            .await
    }

    async fn set_ex(
        &self,
        request: Request<pb::SetExRequest>,
    ) -> Result<Response<pb::SetExResponse>, Status> {
        self.gate
            .unary(request, async |call, req| {
                let ttl = required_ttl(req.ttl.as_ref(), "to store without one use Set")?;
                self.store(call, &req.key, req.value, Some(ttl)).await?;
                Ok(pb::SetExResponse {})
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
                let deleted = call.handle.basic.delete(call.ns(), &req.key).await?;
                Ok(pb::DeleteResponse { deleted })
            })
            .await
    }

    async fn get_multi(
        &self,
        request: Request<pb::GetMultiRequest>,
    ) -> Result<Response<pb::GetMultiResponse>, Status> {
        self.gate
            .unary(request, async |call, req| {
                let limits = call.limits();
                check_keys(limits, req.keys.iter().map(String::as_str))?;
                let values = call.handle.basic.get_multi(call.ns(), &req.keys).await?;
                let sizes = req.keys.iter().zip(&values);
                check_reply(
                    limits,
                    sizes.map(|(k, v)| (k.len(), v.as_ref().map_or(0, Vec::len))),
                )?;
                let entries = req
                    .keys
                    .into_iter()
                    .zip(values)
                    .map(|(key, v)| pb::Entry {
                        key,
                        found: v.is_some(),
                        value: v.unwrap_or_default(),
                    })
                    .collect();
                Ok(pb::GetMultiResponse { entries })
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
                let exists = call.handle.basic.exists(call.ns(), &req.key).await?;
                Ok(pb::ExistsResponse { exists })
            })
            .await
    }

    async fn increment(
        &self,
        request: Request<pb::IncrementRequest>,
    ) -> Result<Response<pb::IncrementResponse>, Status> {
        self.gate
            .unary(request, async |call, req| {
                let counters = call.need(Interface::CacheCounters, |c| c.counters.as_ref())?;
                check_key(call.limits(), &req.key)?;
                let ttl = Self::ttl(call, req.ttl.as_ref())?;
                let value = counters
                    .increment(call.ns(), &req.key, req.delta, ttl)
                    .await?;
                Ok(pb::IncrementResponse { value })
            })
            .await
    }
}
