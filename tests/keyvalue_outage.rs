//! Backend outages: calls fail UNAVAILABLE (retryable, with ErrorInfo) while
//! the server is gone, the pool actor notices and reconnects when it returns,
//! and calls succeed again without restarting the gateway.
//!
//! Redis: a private redis-server on a free loopback port, really stopped and
//! restarted. Postgres: the shared server behind a loopback TCP proxy that
//! the test cuts (closing every connection and refusing new ones) and
//! restores, so other tests using Postgres are not disturbed.

mod common;

use std::{net::SocketAddr, time::Duration};

use common::{
    kv::{database_url, kv_config, redis_url, run_id, Harness, Kv},
    servers::{Kind, Server},
};
use prism::{backends::HealthState, error::Service, runtime::block_on_multi_thread};
use tokio::{
    net::{TcpListener, TcpStream},
    task::JoinSet,
};
use tonic::Code;
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

/// Retries `call` until it returns UNAVAILABLE (bounded): the first calls
/// after a cut may still be in flight on old connections.
async fn expect_unavailable(kv: &Kv) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match kv.set("during-outage", b"x").await {
            Err(status) if status.code() == Code::Unavailable => {
                // The first calls find the server gone; once the pool actor
                // has seen it fail, calls are refused at the gate.
                let info = tonic_types::StatusExt::get_details_error_info(&status).unwrap();
                assert!(
                    ["BACKEND_UNAVAILABLE", "BACKEND_DOWN"].contains(&info.reason.as_str()),
                    "{status:?}"
                );
                assert_eq!(info.domain, Service::KeyValue.domain());
                assert!(info.metadata.contains_key("backend"), "{status:?}");
                let retry = tonic_types::StatusExt::get_details_retry_info(&status);
                assert!(retry.is_some_and(|r| r.retry_delay.is_some()), "{status:?}");
                return;
            }
            other => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{}: never UNAVAILABLE, last: {other:?}",
                    kv.backend
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn namespace_health(h: &Harness, service: &str) -> ServingStatus {
    let mut health = HealthClient::new(h.gw.channel.clone());
    let answer = health
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    ServingStatus::try_from(answer.status).unwrap()
}

/// Follows the gRPC health watch stream until the namespace reports `want`.
async fn wait_namespace_health(h: &Harness, service: &str, want: ServingStatus) {
    let mut health = HealthClient::new(h.gw.channel.clone());
    let mut watch = health
        .watch(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    let seen = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(update) = watch.message().await.unwrap() {
            if update.status == want as i32 {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(seen, Ok(true), "{service} never reported {want:?}");
}

#[test]
fn redis_outage_is_unavailable_then_recovers_without_restart() {
    block_on_multi_thread(async {
        let mut server = Server::start(Kind::RedisVolatile).await;
        let run = run_id();
        let config = kv_config(&run, &database_url(), &server.url());
        let h = Harness::start_with(config).await;
        let kv = h.client("redis").await;
        kv.set("before", b"1").await.unwrap();
        let namespace = prism::server::namespace_health_name(&format!("kv{run}"));
        assert_eq!(
            namespace_health(&h, &namespace).await,
            ServingStatus::Serving
        );

        server.kill9().await;
        expect_unavailable(&kv).await;
        h.wait_health("redis", HealthState::Down).await;
        wait_namespace_health(&h, &namespace, ServingStatus::NotServing).await;
        let tree = h.gw.gateway.observe().await.unwrap();
        let pool = tree.find("backend/redis").unwrap();
        assert_eq!(pool.state["health"], "down", "{}", pool.state);

        server.restart().await;
        h.wait_health("redis", HealthState::Up).await;
        wait_namespace_health(&h, &namespace, ServingStatus::Serving).await;
        // The restarted server kept nothing (no persistence); the gateway
        // serves again on the same session.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match kv.set("after", b"2").await {
                Ok(_) => break,
                Err(e) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "never recovered: {e:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        assert_eq!(kv.value("after").await.unwrap(), b"2");
        let tree = h.gw.gateway.observe().await.unwrap();
        let pool = tree.find("backend/redis").unwrap();
        assert!(
            pool.state["recoveries"].as_u64().unwrap() >= 1,
            "{}",
            pool.state
        );
        h.stop().await;
    });
}

/// A loopback TCP proxy to `target` that can be cut and restored.
struct Proxy {
    addr: SocketAddr,
    target: SocketAddr,
    tasks: Option<JoinSet<()>>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut proxy = Proxy {
            addr,
            target,
            tasks: None,
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&mut self, listener: TcpListener) {
        let target = self.target;
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            // Aborting this task drops the set, which aborts every pipe.
            let mut connections = JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                connections.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        self.tasks = Some(tasks);
    }

    /// Closes the listener and every proxied connection.
    async fn cut(&mut self) {
        if let Some(mut tasks) = self.tasks.take() {
            tasks.shutdown().await;
        }
    }

    async fn restore(&mut self) {
        let listener = TcpListener::bind(self.addr)
            .await
            .expect("rebind proxy port");
        self.serve(listener);
    }
}

#[test]
fn postgres_outage_is_unavailable_then_recovers_without_restart() {
    block_on_multi_thread(async {
        let url = database_url();
        // postgres://user@host:port/db → the host:port part.
        let hostport = url
            .split('@')
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or("127.0.0.1:5432");
        let target: SocketAddr = tokio::net::lookup_host(hostport)
            .await
            .unwrap()
            .next()
            .unwrap();
        let mut proxy = Proxy::start(target).await;
        let proxied = url.replace(hostport, &proxy.addr.to_string());
        let h = Harness::start_with(kv_config(&run_id(), &proxied, &redis_url())).await;
        let kv = h.client("postgres").await;
        kv.set("before", b"1").await.unwrap();

        proxy.cut().await;
        expect_unavailable(&kv).await;
        h.wait_health("postgres", HealthState::Down).await;

        proxy.restore().await;
        h.wait_health("postgres", HealthState::Up).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match kv.set("after", b"2").await {
                Ok(_) => break,
                Err(e) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "never recovered: {e:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        assert_eq!(kv.value("before").await.unwrap(), b"1", "nothing was lost");
        assert_eq!(kv.value("after").await.unwrap(), b"2");
        h.stop().await;
        proxy.cut().await;
    });
}
