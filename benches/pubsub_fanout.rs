//! PubSub fan-out benchmark (not a test): one publisher, many subscribers on
//! the memory backend, all through the gateway's gRPC endpoint on loopback.
//! Reports events delivered per second, delivery latency (publish call
//! start to receipt by the subscriber, p50/p99/max) and what went missing.
//!
//! Run: `cargo bench --bench pubsub_fanout`. Bounded in count and time:
//! `PRISM_BENCH_SUBSCRIBERS` (default 1000), `PRISM_BENCH_EVENTS` (default
//! 1000), `PRISM_BENCH_CONNECTIONS` (subscriber HTTP/2 connections, default
//! 10); the run stops after 120 s whatever happens. Under `cargo test` it
//! makes a small smoke run (20 subscribers, 50 events).

mod common;

use common::{connect, env, percentile, session, subscribe, Served};
use std::time::Duration;

use prism::{
    config::{GatewayConfig, Source},
    proto::pubsub::v1::{self as pb, pub_sub_service_client::PubSubServiceClient},
    runtime::block_on_multi_thread,
};
use tokio::time::Instant;

const KEY: &str = "bench-key";
const LIMIT: Duration = Duration::from_secs(120);

fn config(buffer: usize) -> GatewayConfig {
    let yaml = format!(
        r#"
server: {{ shutdown_grace: 2s }}
backends:
  memory: {{ type: memory }}
namespaces:
  bench:
    allowed_backends: [memory]
    allowed_patterns: [pubsub]
    api_keys: [{{ name: bench, sha256: "{key}" }}]
    pubsub: {{ buffer: {buffer}, overflow: drop_oldest }}
configs:
  events: {{ namespace: bench, pattern: pubsub, backend: memory }}
"#,
        key = prism::auth::api_key_digest(KEY)
    );
    GatewayConfig::from_yaml(&yaml, &Source::Inline, &[("_", "_"); 0]).expect("bench config")
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` does not, and
    // then a small smoke run proves the benchmark still works.
    let full = std::env::args().any(|a| a == "--bench");
    let subscribers = env("PRISM_BENCH_SUBSCRIBERS", if full { 1000 } else { 20 });
    let events = env("PRISM_BENCH_EVENTS", if full { 1000 } else { 50 });
    let connections = env("PRISM_BENCH_CONNECTIONS", 10).max(1);
    block_on_multi_thread(async move {
        // A buffer per subscription that holds the whole run: any drop
        // would be the gateway's doing, and is reported.
        let served = Served::start(config(events.max(16))).await;
        let addr = served.addr;

        let control = connect(addr).await;
        let token = session(&control, KEY, "events").await;

        let mut channels = Vec::with_capacity(connections);
        for _ in 0..connections {
            channels.push(connect(addr).await);
        }
        let base = Instant::now();
        let deadline = tokio::time::Instant::now() + LIMIT;
        let mut tasks = Vec::with_capacity(subscribers);
        for i in 0..subscribers {
            let mut stream = subscribe(
                channels[i % connections].clone(),
                token.clone(),
                "bench.>",
                events,
            )
            .await;
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(events);
                let mut last = base;
                while let Ok(Ok(Some(event))) =
                    tokio::time::timeout_at(deadline, stream.message()).await
                {
                    let sent = u64::from_be_bytes(event.payload[..8].try_into().unwrap());
                    last = Instant::now();
                    let now = last.duration_since(base).as_nanos() as u64;
                    latencies.push(now.saturating_sub(sent) / 1000);
                }
                (latencies, last)
            }));
        }
        println!(
            "{subscribers} subscribers on {connections} connections, {events} events, one publisher"
        );

        let mut publisher = PubSubServiceClient::new(control.clone());
        let started = Instant::now();
        let mut counted = 0u64;
        for _ in 0..events {
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            let sent = base.elapsed().as_nanos() as u64;
            let mut payload = sent.to_be_bytes().to_vec();
            payload.resize(64, 0);
            let r = publisher
                .publish(pb::PublishRequest {
                    session_token: token.clone(),
                    topic: "bench.tick".into(),
                    payload,
                    ..Default::default()
                })
                .await
                .expect("publish");
            counted += r.into_inner().subscriber_count as u64;
        }
        let published_in = started.elapsed();

        let mut latencies = Vec::with_capacity(subscribers * events);
        let mut last = started;
        for task in tasks {
            let (l, t) = task.await.unwrap();
            latencies.extend(l);
            last = last.max(t);
        }
        let delivered = latencies.len() as u64;
        latencies.sort_unstable();
        let elapsed = last.duration_since(started).as_secs_f64();
        println!(
            "published {events} events in {:.2}s ({:.0} publishes/s); subscriber_count summed {counted}",
            published_in.as_secs_f64(),
            events as f64 / published_in.as_secs_f64()
        );
        println!(
            "delivered {delivered} of {} ({} missing) in {elapsed:.2}s: {:.0} events/s",
            subscribers * events,
            (subscribers * events) as u64 - delivered,
            delivered as f64 / elapsed
        );
        println!(
            "delivery latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            percentile(&latencies, 0.50) as f64 / 1000.0,
            percentile(&latencies, 0.99) as f64 / 1000.0,
            latencies.last().copied().unwrap_or(0) as f64 / 1000.0
        );
        served.stop().await;
    });
}
