//! Helpers the benchmarks share: bounds from the environment, a loopback
//! channel, a gateway serving on loopback, a session, a PubSub
//! subscription, percentiles.

use std::sync::Arc;

use prism::{
    config::GatewayConfig,
    proto::{
        pubsub::v1::{self as ps, pub_sub_service_client::PubSubServiceClient},
        session::v1::{
            create_session_request::{Auth, Config},
            session_service_client::SessionServiceClient,
            CreateSessionRequest,
        },
    },
    server::{self, Gateway, Listeners},
};
use tonic::transport::{Channel, Endpoint};

/// A count from the environment variable `name`, else `default`.
pub fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A channel to the gateway (Nagle off, as a latency-minded client runs).
pub async fn connect(addr: std::net::SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .tcp_nodelay(true)
        .connect()
        .await
        .expect("connect to the gateway")
}

/// A session token: API key `key`, named config `config`.
pub async fn session(channel: &Channel, key: &str, config: &str) -> String {
    SessionServiceClient::new(channel.clone())
        .create_session(CreateSessionRequest {
            auth: Some(Auth::ApiKey(key.into())),
            config: Some(Config::ConfigName(config.into())),
            ..Default::default()
        })
        .await
        .expect("a session")
        .into_inner()
        .session_token
}

/// The `p` quantile (0.0 to 1.0) of sorted samples; 0 when empty.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// A PubSub subscription to `pattern` that ends after `max` events.
/// (Used by the Transact and fan-out benches.)
#[allow(dead_code)]
pub async fn subscribe(
    channel: Channel,
    token: String,
    pattern: &str,
    max: usize,
) -> tonic::Streaming<ps::Event> {
    PubSubServiceClient::new(channel)
        .subscribe(ps::SubscribeRequest {
            session_token: token,
            topic_pattern: pattern.into(),
            options: Some(ps::SubscriptionOptions {
                max_messages: Some(i32::try_from(max).unwrap_or(i32::MAX)),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("subscribe")
        .into_inner()
}

/// A gateway serving gRPC on a free loopback port (no admin listener).
pub struct Served {
    /// (Read by the benches that wait on a backend's health.)
    #[allow(dead_code)]
    pub gateway: Arc<Gateway>,
    pub addr: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
}

impl Served {
    pub async fn start(config: GatewayConfig) -> Served {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let gateway = Arc::new(Gateway::start(config).expect("gateway starts"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn({
            let gateway = gateway.clone();
            async move {
                let _ = server::run(
                    gateway,
                    Listeners {
                        grpc: listener,
                        admin: None,
                    },
                    async move {
                        let _ = stopped.await;
                    },
                )
                .await;
            }
        });
        Served {
            gateway,
            addr,
            stop,
            server,
        }
    }

    /// Shuts the gateway down and waits for it (10 s at most).
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), self.server).await;
    }
}
