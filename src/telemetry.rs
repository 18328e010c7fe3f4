//! Tracing and logs: one `rpc` span per gRPC call (service, method, and —
//! once the session is checked — namespace, session id and backend), the
//! client's W3C `traceparent` taken from the call's metadata, text or JSON
//! logs, and OpenTelemetry OTLP export when an endpoint is configured
//! (`server.otlp_endpoint` or `OTEL_EXPORTER_OTLP_ENDPOINT`). Without one
//! nothing is exported and nothing is set up that could fail.

use opentelemetry::{
    propagation::{Extractor, TextMapPropagator},
    trace::TracerProvider as _,
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider, Resource};
use tonic::codegen::http::HeaderMap;
use tracing::{field::Empty, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt, EnvFilter, Layer};

/// The W3C trace context of a call: (trace id, parent span id), when the
/// `traceparent` header is well formed.
pub fn traceparent(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get("traceparent")?.to_str().ok()?;
    let mut parts = v.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let valid = hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && hex(parent, 16)
        && parent.bytes().any(|b| b != b'0')
        && hex(flags, 2);
    valid.then(|| (trace.to_ascii_lowercase(), parent.to_ascii_lowercase()))
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The span of one gRPC call `service`/`method`, a child of the client's
/// trace when the call carries a `traceparent`.
pub fn rpc_span(service: &str, method: &str, headers: &HeaderMap) -> Span {
    let span = tracing::info_span!(
        "rpc",
        otel.name = %format_args!("{service}/{method}"),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        namespace = Empty,
        session_id = Empty,
        backend = Empty,
        trace_id = Empty,
        parent_span_id = Empty,
    );
    if let Some((trace, parent)) = traceparent(headers) {
        span.record("trace_id", trace.as_str());
        span.record("parent_span_id", parent.as_str());
        let cx = TraceContextPropagator::new().extract(&Headers(headers));
        // Without an OpenTelemetry layer there is no context to attach.
        let _ = span.set_parent(cx);
    }
    span
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Flushes and stops the OTLP exporter when dropped.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes pending spans; call before the runtime ends.
    pub async fn shutdown(mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        }
    }
}

/// `text` with its control characters written as escapes (`\n`,
/// `\u{1b}`, ...).
fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    std::borrow::Cow::Owned(
        text.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

/// How text logs write fields: every value with its control characters
/// escaped, so a client's string in a field or a message (a topic, a
/// config name, a request path) can neither start a forged log line nor
/// send terminal escapes. JSON logs are escaped by their encoder.
fn escaped_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + Send + Sync + 'static
{
    use tracing_subscriber::field::MakeExt as _;
    tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
        let text = format!("{value:?}");
        let text = escape_controls(&text);
        if field.name() == "message" {
            write!(w, "{text}")
        } else {
            write!(w, "{field}={text}")
        }
    })
    .delimited(" ")
}

/// The installed subscriber's filter, which a config reload replaces.
static FILTER: std::sync::OnceLock<
    tracing_subscriber::reload::Handle<EnvFilter, tracing_subscriber::Registry>,
> = std::sync::OnceLock::new();

/// The filter of `RUST_LOG`-style directives (`server.log_level`;
/// `info` when absent), or why they do not parse.
pub fn log_filter(directives: Option<&str>) -> Result<EnvFilter, String> {
    let directives = directives.unwrap_or("info");
    EnvFilter::try_new(directives).map_err(|e| format!("log level `{directives}`: {e}"))
}

/// Puts a new filter in use; false when this process installed no
/// subscriber (an embedding test, say), so there is nothing to change.
pub fn replace_log_filter(filter: EnvFilter) -> Result<bool, String> {
    match FILTER.get() {
        None => Ok(false),
        Some(handle) => handle
            .reload(filter)
            .map(|()| true)
            .map_err(|e| format!("log level: {e}")),
    }
}

/// Installs the global subscriber: the `log_level` filter (see
/// [`log_filter`]; replaceable on reload), text or JSON lines on stdout,
/// and OTLP export to `otlp_endpoint` when given. Must run inside the
/// tokio runtime when exporting.
pub fn init(
    format: LogFormat,
    log_level: Option<&str>,
    otlp_endpoint: Option<&str>,
) -> Result<Telemetry, String> {
    let (filter, handle) = tracing_subscriber::reload::Layer::new(log_filter(log_level)?);
    let fmt = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .fmt_fields(escaped_fields())
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer().json().boxed(),
    };
    let provider = match otlp_endpoint {
        None => None,
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .map_err(|e| format!("otlp exporter for {endpoint}: {e}"))?;
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(Resource::builder().with_service_name("prism").build())
                    .build(),
            )
        }
    };
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("prism")));
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|e| format!("logging: {e}"))?;
    let _ = FILTER.set(handle);
    if let Some(endpoint) = otlp_endpoint {
        tracing::info!(%endpoint, "exporting traces over OTLP");
    }
    Ok(Telemetry { provider })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_strings_cannot_forge_log_lines() {
        #[derive(Clone, Default)]
        struct Captured(std::sync::Arc<parking_lot::Mutex<Vec<u8>>>);
        impl std::io::Write for Captured {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .fmt_fields(escaped_fields())
            .with_writer(move || writer.clone())
            .finish();
        let hostile = "orders\n2026-01-01T00:00:00Z  INFO forged line \u{1b}[31m";
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(topic = %hostile, name = hostile, "published {hostile}");
        });
        let text = String::from_utf8(captured.0.lock().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "one event, one line: {text}");
        assert!(!text.contains('\u{1b}'), "{text}");
        assert!(text.contains("topic=orders\\n2026"), "{text}");
    }

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("traceparent", v.parse().unwrap());
        h
    }

    #[test]
    fn traceparent_is_parsed_and_checked() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            traceparent(&headers(ok)),
            Some((
                "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                "00f067aa0ba902b7".into()
            ))
        );
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-xyz",
        ] {
            assert_eq!(traceparent(&headers(bad)), None, "{bad}");
        }
        assert_eq!(traceparent(&HeaderMap::new()), None);
    }
}
