//! `prism.config.v1.ConfigService`: the named client configurations a client
//! may open a session with. They carry no secrets (backend names and types
//! only, never addresses), so no session is needed to read them.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::{
    config::resolve::{self, NamedConfigs},
    error::{status, Service},
    proto::config::v1::{
        config_service_server::ConfigService, AccessPattern, GetConfigRequest, GetConfigResponse,
        ListConfigsRequest, ListConfigsResponse,
    },
};

pub struct ConfigApi {
    named: Arc<NamedConfigs>,
}

impl ConfigApi {
    pub fn new(named: Arc<NamedConfigs>) -> Self {
        ConfigApi { named }
    }
}

#[tonic::async_trait]
impl ConfigService for ConfigApi {
    async fn get_config(
        &self,
        request: Request<GetConfigRequest>,
    ) -> Result<Response<GetConfigResponse>, Status> {
        let resolved = self
            .named
            .get(&request.get_ref().name)
            .map_err(status(Service::Config))?;
        Ok(Response::new(GetConfigResponse {
            config: Some(resolved.proto.clone()),
        }))
    }

    async fn list_configs(
        &self,
        request: Request<ListConfigsRequest>,
    ) -> Result<Response<ListConfigsResponse>, Status> {
        let req = request.into_inner();
        let pattern = AccessPattern::try_from(req.pattern)
            .ok()
            .and_then(resolve::pattern_from_proto);
        let configs = self
            .named
            .all()
            .values()
            .filter(|c| req.namespace.is_empty() || c.namespace == req.namespace)
            .filter(|c| pattern.is_none_or(|p| c.patterns.contains(&p)))
            .map(|c| c.proto.clone())
            .collect();
        Ok(Response::new(ListConfigsResponse { configs }))
    }
}
