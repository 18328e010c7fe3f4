//! What any gRPC tool sees without proto files: health, reflection (v1 and
//! v1alpha) and the ConfigService.

mod common;

use common::*;
use futures::StreamExt;
use prism::{
    error::Service,
    proto::config::v1::{
        config_service_client::ConfigServiceClient, AccessPattern, GetConfigRequest,
        ListConfigsRequest,
    },
    runtime::block_on_multi_thread,
};
use tonic::Code;
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

#[test]
fn health_reports_serving() {
    block_on_multi_thread(async {
        let gw = TestGateway::start().await;
        let mut health = HealthClient::new(gw.channel.clone());
        for service in [
            "",
            "prism.session.v1.SessionService",
            "prism.config.v1.ConfigService",
            "prism.keyvalue.v1.KeyValueService",
            "prism.queue.v1.QueueService",
            "prism.pubsub.v1.PubSubService",
            "prism.reader.v1.ReaderService",
            "prism.transact.v1.TransactService",
        ] {
            let status = health
                .check(HealthCheckRequest {
                    service: service.to_string(),
                })
                .await
                .unwrap()
                .into_inner()
                .status;
            assert_eq!(status, ServingStatus::Serving as i32, "service {service:?}");
        }
        // An unknown service is NotFound, not a silent Serving.
        let err = health
            .check(HealthCheckRequest {
                service: "prism.nothing.v1.NoService".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        gw.stop().await;
    });
}

#[test]
fn reflection_v1_and_v1alpha_list_services() {
    block_on_multi_thread(async {
        let gw = TestGateway::start().await;

        use tonic_reflection::pb::v1alpha::{
            server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
            ServerReflectionRequest,
        };
        let mut client = ServerReflectionClient::new(gw.channel.clone());
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = client
            .server_reflection_info(futures::stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let response = stream.next().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
            panic!("unexpected reflection response")
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        for expected in [
            "prism.session.v1.SessionService",
            "prism.config.v1.ConfigService",
            "prism.keyvalue.v1.KeyValueService",
            "prism.transact.v1.TransactService",
            "grpc.health.v1.Health",
        ] {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} missing from {names:?}"
            );
        }
        // The admin API is served (and listed) only on the admin listener.
        assert!(
            !names.iter().any(|n| n.contains("AdminService")),
            "{names:?}"
        );

        use tonic_reflection::pb::v1::{
            server_reflection_client::ServerReflectionClient as V1Client,
            server_reflection_request::MessageRequest as V1Request,
            server_reflection_response::MessageResponse as V1Response,
            ServerReflectionRequest as V1ReflectionRequest,
        };
        let mut client = V1Client::new(gw.channel.clone());
        let request = V1ReflectionRequest {
            host: String::new(),
            message_request: Some(V1Request::FileContainingSymbol(
                "prism.session.v1.SessionService".into(),
            )),
        };
        let mut stream = client
            .server_reflection_info(futures::stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let response = stream.next().await.unwrap().unwrap();
        let Some(V1Response::FileDescriptorResponse(files)) = response.message_response else {
            panic!("unexpected reflection response")
        };
        assert!(!files.file_descriptor_proto.is_empty());
        gw.stop().await;
    });
}

#[test]
fn config_service_lists_and_gets_named_configs() {
    block_on_multi_thread(async {
        let gw = TestGateway::start().await;
        let mut client = ConfigServiceClient::new(gw.channel.clone());
        let config = client
            .get_config(GetConfigRequest {
                name: "orders-db".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .config
            .unwrap();
        assert_eq!(config.pattern, AccessPattern::Reader as i32);
        assert_eq!(
            config.patterns,
            vec![AccessPattern::Reader as i32, AccessPattern::Transact as i32]
        );
        assert_eq!(config.backend.unwrap().name, "local-sqlite");

        let all = client
            .list_configs(ListConfigsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .configs;
        assert_eq!(all.len(), 5);
        let other = client
            .list_configs(ListConfigsRequest {
                namespace: "other".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .configs;
        assert_eq!(
            other.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            vec!["other-kv"]
        );
        let transact = client
            .list_configs(ListConfigsRequest {
                pattern: AccessPattern::Transact as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .configs;
        assert_eq!(transact.len(), 1);

        let err = client
            .get_config(GetConfigRequest {
                name: "nope".into(),
            })
            .await
            .unwrap_err();
        assert_error(&err, Code::NotFound, "CONFIG_NOT_FOUND", Service::Config);
        gw.stop().await;
    });
}
