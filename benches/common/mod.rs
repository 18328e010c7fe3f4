//! Helpers the benchmarks share: bounds from the environment, a loopback
//! channel, a PubSub subscription, percentiles.

use prism::proto::pubsub::v1::{self as ps, pub_sub_service_client::PubSubServiceClient};
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

/// The `p` quantile (0.0 to 1.0) of sorted samples; 0 when empty.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// A PubSub subscription to `pattern` that ends after `max` events.
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
