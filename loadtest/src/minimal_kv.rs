//! The floor a KeyValue Get is measured against: a minimal tonic service
//! built from the same generated code as the gateway, whose Get is a
//! DashMap lookup and whose Set an insert. No session, no policy, no
//! metrics: what any gRPC key-value server must do for the same messages.
//! Every other KeyValue method answers UNIMPLEMENTED.

use std::sync::Arc;

use dashmap::DashMap;
use prism_proto::keyvalue::v1::{
    self as pb,
    key_value_service_server::{KeyValueService, KeyValueServiceServer},
};
use tonic::{Request, Response, Status};

use crate::baseline::{incoming, BaselineServer};

/// Values by key, each with its version.
#[derive(Default, Clone)]
struct MinimalKv {
    values: Arc<DashMap<String, (Vec<u8>, u64)>>,
}

/// Starts the minimal service on an ephemeral loopback port, on threads
/// of its own (as the no-op server).
pub async fn start() -> std::io::Result<BaselineServer> {
    start_on(0).await
}

/// Starts the minimal service on loopback port `port` (0: any free one).
pub async fn start_on(port: u16) -> std::io::Result<BaselineServer> {
    BaselineServer::start("prism-minimal-kv", port, |listener, stopped| async move {
        let served = tonic::transport::Server::builder()
            .add_service(KeyValueServiceServer::new(MinimalKv::default()))
            .serve_with_incoming_shutdown(incoming(listener), async {
                let _ = stopped.await;
            })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "minimal KeyValue server failed");
        }
    })
    .await
}

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented(
        "the minimal baseline serves Get and Set only",
    ))
}

type Never<T> = futures::stream::Empty<Result<T, Status>>;

#[tonic::async_trait]
impl KeyValueService for MinimalKv {
    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let key = &request.get_ref().key;
        Ok(Response::new(match self.values.get(key) {
            Some(entry) => pb::GetResponse {
                found: true,
                value: entry.0.clone(),
                version: entry.1,
                ttl: None,
            },
            None => pb::GetResponse::default(),
        }))
    }

    async fn set(
        &self,
        request: Request<pb::SetRequest>,
    ) -> Result<Response<pb::SetResponse>, Status> {
        let req = request.into_inner();
        let mut entry = self.values.entry(req.key).or_insert((Vec::new(), 0));
        entry.0 = req.value;
        entry.1 += 1;
        Ok(Response::new(pb::SetResponse {
            version: entry.1,
            replayed: false,
        }))
    }

    async fn delete(
        &self,
        _: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        unimplemented()
    }

    async fn exists(
        &self,
        _: Request<pb::ExistsRequest>,
    ) -> Result<Response<pb::ExistsResponse>, Status> {
        unimplemented()
    }

    type ScanStream = Never<pb::ScanResponse>;

    async fn scan(
        &self,
        _: Request<pb::ScanRequest>,
    ) -> Result<Response<Self::ScanStream>, Status> {
        unimplemented()
    }

    type ScanKeysStream = Never<pb::KeyResponse>;

    async fn scan_keys(
        &self,
        _: Request<pb::ScanKeysRequest>,
    ) -> Result<Response<Self::ScanKeysStream>, Status> {
        unimplemented()
    }

    async fn count(
        &self,
        _: Request<pb::CountRequest>,
    ) -> Result<Response<pb::CountResponse>, Status> {
        unimplemented()
    }

    async fn expire(
        &self,
        _: Request<pb::ExpireRequest>,
    ) -> Result<Response<pb::ExpireResponse>, Status> {
        unimplemented()
    }

    async fn get_ttl(
        &self,
        _: Request<pb::GetTtlRequest>,
    ) -> Result<Response<pb::GetTtlResponse>, Status> {
        unimplemented()
    }

    async fn persist(
        &self,
        _: Request<pb::PersistRequest>,
    ) -> Result<Response<pb::PersistResponse>, Status> {
        unimplemented()
    }

    async fn batch_get(
        &self,
        _: Request<pb::BatchGetRequest>,
    ) -> Result<Response<pb::BatchGetResponse>, Status> {
        unimplemented()
    }

    async fn batch_set(
        &self,
        _: Request<pb::BatchSetRequest>,
    ) -> Result<Response<pb::BatchSetResponse>, Status> {
        unimplemented()
    }

    async fn batch_delete(
        &self,
        _: Request<pb::BatchDeleteRequest>,
    ) -> Result<Response<pb::BatchDeleteResponse>, Status> {
        unimplemented()
    }

    async fn compare_and_swap(
        &self,
        _: Request<pb::CompareAndSwapRequest>,
    ) -> Result<Response<pb::CompareAndSwapResponse>, Status> {
        unimplemented()
    }

    async fn transaction(
        &self,
        _: Request<pb::TransactionRequest>,
    ) -> Result<Response<pb::TransactionResponse>, Status> {
        unimplemented()
    }
}
