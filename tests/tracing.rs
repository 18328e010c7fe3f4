//! Tracing: every gRPC call runs in an `rpc` span that carries the client's
//! W3C trace context and, once the session is checked, its namespace,
//! session id and backend; with an OTLP endpoint configured, `prism serve`
//! exports that span, a child of the client's trace, to the collector (a
//! fake OTLP/gRPC collector in this test).

mod common;

use std::{collections::HashMap, sync::Arc};

use common::TestGateway;
use opentelemetry_proto::tonic::collector::trace::v1::{
    trace_service_server::{TraceService, TraceServiceServer},
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use parking_lot::Mutex;
use prism::{
    proto::keyvalue::v1::{key_value_service_client::KeyValueServiceClient, SetRequest},
    runtime::block_on_multi_thread,
};
use tracing::{
    field::{Field, Visit},
    span::{Attributes, Id, Record},
};
use tracing_subscriber::{layer::Context, prelude::*, Layer};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

fn traceparent() -> String {
    format!("00-{TRACE_ID}-{PARENT_ID}-01")
}

/// Fields of every `rpc` span, by span id.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<HashMap<u64, HashMap<String, String>>>>);

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_string(),
            format!("{value:?}").trim_matches('"').to_string(),
        );
    }
}

impl<S: tracing::Subscriber> Layer<S> for Captured {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        if attrs.metadata().name() != "rpc" {
            return;
        }
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        self.0.lock().insert(id.into_u64(), fields);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        if let Some(fields) = self.0.lock().get_mut(&id.into_u64()) {
            values.record(&mut Fields(fields));
        }
    }
}

#[test]
fn the_client_trace_context_and_the_session_appear_in_the_rpc_span() {
    let captured = Captured::default();
    tracing_subscriber::registry()
        .with(captured.clone())
        .try_init()
        .expect("this test binary's subscriber");
    block_on_multi_thread(async {
        let gw = TestGateway::start().await;
        let session = gw
            .open_inline(prism::proto::config::v1::AccessPattern::KeyValue, "memory")
            .await;
        let mut kv = KeyValueServiceClient::new(gw.channel.clone());
        let mut req = tonic::Request::new(SetRequest {
            session_token: session.session_token.clone(),
            key: "traced".into(),
            value: b"v".to_vec(),
            ..Default::default()
        });
        req.metadata_mut()
            .insert("traceparent", traceparent().parse().unwrap());
        kv.set(req).await.unwrap();
        gw.stop().await;

        let spans = captured.0.lock().clone();
        let set = spans
            .values()
            .find(|f| f.get("rpc.method").map(String::as_str) == Some("Set"))
            .unwrap_or_else(|| panic!("no rpc span for Set in {spans:#?}"));
        assert_eq!(set["rpc.service"], "prism.keyvalue.v1.KeyValueService");
        assert_eq!(set["trace_id"], TRACE_ID, "{set:?}");
        assert_eq!(set["parent_span_id"], PARENT_ID, "{set:?}");
        assert_eq!(set["namespace"], "default", "{set:?}");
        assert_eq!(set["session_id"], session.session_id, "{set:?}");
        assert_eq!(set["backend"], "memory", "{set:?}");
    });
}

/// A fake OTLP collector: keeps what it is sent.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[test]
fn serve_exports_the_rpc_span_over_otlp_as_a_child_of_the_client_trace() {
    block_on_multi_thread(async {
        let collector = Collector::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let otlp = listener.local_addr().unwrap();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(collector.clone()))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );

        let dir = std::env::temp_dir().join(format!("prism-otlp-{}", common::kv::run_id()));
        let endpoint = format!("http://{otlp}");
        let db = dir.join("orders.db");
        let (mut child, addr) = common::spawn_serve(
            &[],
            &[
                ("PRISM_SQLITE_PATH", db.as_os_str()),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_ref()),
                ("OTEL_BSP_SCHEDULE_DELAY", "100".as_ref()),
            ],
        )
        .await;
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut sessions =
            prism::proto::session::v1::session_service_client::SessionServiceClient::new(
                channel.clone(),
            );
        let token = sessions
            .create_session(common::api_key_request("prism-dev-key", "user-profiles"))
            .await
            .unwrap()
            .into_inner()
            .session_token;
        let mut req = tonic::Request::new(SetRequest {
            session_token: token,
            key: "traced".into(),
            value: b"v".to_vec(),
            ..Default::default()
        });
        req.metadata_mut()
            .insert("traceparent", traceparent().parse().unwrap());
        KeyValueServiceClient::new(channel).set(req).await.unwrap();

        let trace_id = hex_bytes(TRACE_ID);
        let parent_id = hex_bytes(PARENT_ID);
        common::wait_until("the collector receives the Set span", || async {
            collector.0.lock().iter().any(|export| {
                export
                    .resource_spans
                    .iter()
                    .flat_map(|r| &r.scope_spans)
                    .flat_map(|s| &s.spans)
                    .any(|span| {
                        span.name == "prism.keyvalue.v1.KeyValueService/Set"
                            && span.trace_id == trace_id
                            && span.parent_span_id == parent_id
                    })
            })
        })
        .await;
        let _ = child.kill().await;
        server.abort();
        let _ = std::fs::remove_dir_all(&dir);
    });
}

fn hex_bytes(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
