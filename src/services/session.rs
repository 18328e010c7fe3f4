//! `prism.session.v1.SessionService`: create, heartbeat, refresh, inspect and
//! close sessions.

use std::sync::Arc;

use prost::Message as _;
use tonic::{Request, Response, Status};

use crate::gate::session_token;
use crate::{
    error::{status, Service},
    proto::session::v1::{
        create_session_request::{Auth, Config},
        session_service_server::SessionService,
        CloseSessionRequest, CloseSessionResponse, CreateSessionRequest, CreateSessionResponse,
        GetSessionRequest, GetSessionResponse, HeartbeatRequest, HeartbeatResponse,
        RefreshSessionRequest, RefreshSessionResponse, SessionMetrics,
    },
    session::{
        lifecycle::{ConfigChoice, Credentials, NewSession},
        Sessions,
    },
};

pub struct SessionApi {
    sessions: Arc<Sessions>,
}

impl SessionApi {
    pub fn new(sessions: Arc<Sessions>) -> Self {
        SessionApi { sessions }
    }
}

fn duration_ms(ms: u64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

#[tonic::async_trait]
impl SessionService for SessionApi {
    async fn create_session(
        &self,
        request: Request<CreateSessionRequest>,
    ) -> Result<Response<CreateSessionResponse>, Status> {
        // Only the verified certificate of the TLS connection proves an mTLS
        // identity; take it before the request is consumed.
        let transport_leaf = request
            .peer_certs()
            .and_then(|certs| certs.first().map(|c| c.to_vec()));
        let req = request.into_inner();
        let received = req.encoded_len();
        let credentials = match &req.auth {
            Some(Auth::ApiKey(key)) => Some(Credentials::ApiKey(key)),
            Some(Auth::JwtToken(jwt)) => Some(Credentials::Jwt(jwt)),
            Some(Auth::Mtls(m)) => Some(Credentials::Mtls {
                presented: &m.client_cert,
                transport_leaf: transport_leaf.as_deref(),
            }),
            None => None,
        };
        let config = match &req.config {
            Some(Config::ConfigName(name)) => Some(ConfigChoice::Named(name)),
            Some(Config::InlineConfig(inline)) => Some(ConfigChoice::Inline(inline)),
            None => None,
        };
        let (token, entry) = self
            .sessions
            .create(NewSession {
                credentials,
                config,
                client_id: req.client_id.clone(),
                client_version: req.client_version.clone(),
                metadata: req.metadata.clone(),
            })
            .await
            .map_err(status(Service::Session))?;
        let clock = &entry.clock;
        let mut supported_features: Vec<String> = Sessions::base_features()
            .iter()
            .map(|f| f.to_string())
            .collect();
        supported_features.extend(entry.config.interfaces().map(|i| i.name().to_string()));
        let response = CreateSessionResponse {
            session_token: token,
            session_id: entry.id.clone(),
            created_at: Some(entry.created_at.into()),
            expires_at: Some(clock.timestamp_at(entry.expires_ms())),
            config: Some(entry.config.proto.clone()),
            supported_features,
        };
        entry.record_request(received, response.encoded_len());
        Ok(Response::new(response))
    }

    async fn close_session(
        &self,
        request: Request<CloseSessionRequest>,
    ) -> Result<Response<CloseSessionResponse>, Status> {
        let entry = self
            .sessions
            .registry()
            .authorize(session_token(&request.get_ref().session_token, &request))
            .await
            .map_err(status(Service::Session))?;
        let closed = self
            .sessions
            .close(&entry, request.get_ref().force)
            .await
            .map_err(status(Service::Session))?;
        tracing::info!(session_id = %entry.id, namespace = entry.namespace(), force = request.get_ref().force, success = closed.success, "close session");
        Ok(Response::new(CloseSessionResponse {
            success: closed.success,
            message: closed.message,
            pending_operations: closed.pending_operations,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let registry = self.sessions.registry();
        let entry = registry
            .authorize(session_token(&request.get_ref().session_token, &request))
            .await
            .map_err(status(Service::Session))?;
        self.sessions
            .sync(&entry)
            .await
            .map_err(status(Service::Session))?;
        let now = registry.clock().now_ms();
        let response = HeartbeatResponse {
            server_time: Some(std::time::SystemTime::now().into()),
            ttl: Some(duration_ms(entry.expires_ms().saturating_sub(now))),
            status: entry.status(now) as i32,
        };
        entry.record_request(request.get_ref().encoded_len(), response.encoded_len());
        Ok(Response::new(response))
    }

    async fn get_session(
        &self,
        request: Request<GetSessionRequest>,
    ) -> Result<Response<GetSessionResponse>, Status> {
        use std::sync::atomic::Ordering::Relaxed;
        let registry = self.sessions.registry();
        let entry = registry
            .authorize(session_token(&request.get_ref().session_token, &request))
            .await
            .map_err(status(Service::Session))?;
        self.sessions
            .sync(&entry)
            .await
            .map_err(status(Service::Session))?;
        // Count this request before reporting, so the figures include it.
        entry.record_request(request.get_ref().encoded_len(), 0);
        let clock = &entry.clock;
        let now = clock.now_ms();
        let response = GetSessionResponse {
            session_id: entry.id.clone(),
            status: entry.status(now) as i32,
            created_at: Some(entry.created_at.into()),
            expires_at: Some(clock.timestamp_at(entry.expires_ms())),
            last_activity: Some(clock.timestamp_at(entry.last_activity_ms())),
            config: Some(entry.config.proto.clone()),
            metrics: Some(SessionMetrics {
                requests_processed: entry.requests.load(Relaxed),
                bytes_sent: entry.bytes_sent.load(Relaxed),
                bytes_received: entry.bytes_received.load(Relaxed),
                active_streams: entry.active_streams.load(Relaxed),
            }),
        };
        entry
            .bytes_sent
            .fetch_add(response.encoded_len() as i64, Relaxed);
        Ok(Response::new(response))
    }

    async fn refresh_session(
        &self,
        request: Request<RefreshSessionRequest>,
    ) -> Result<Response<RefreshSessionResponse>, Status> {
        let entry = self
            .sessions
            .registry()
            .authorize(session_token(&request.get_ref().session_token, &request))
            .await
            .map_err(status(Service::Session))?;
        let new_expiry = self
            .sessions
            .refresh(&entry, request.get_ref().extension)
            .await
            .map_err(status(Service::Session))?;
        let response = RefreshSessionResponse {
            new_expires_at: Some(entry.clock.timestamp_at(new_expiry)),
        };
        entry.record_request(request.get_ref().encoded_len(), response.encoded_len());
        Ok(Response::new(response))
    }
}
