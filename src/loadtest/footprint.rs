//! Start-to-serving time and idle-session memory of a gateway process:
//! starts `prism serve` on a loopback port, times the spawn until the gRPC
//! health check answers SERVING, then opens N sessions and reads the
//! process's resident memory (`VmRSS`) before and after.

use std::{path::PathBuf, process::Stdio, sync::Arc, time::Duration};

use futures::future::BoxFuture;
use tokio::time::Instant;
use tonic::Code;

use super::{
    runner::{self, Worker},
    scenario::Bounds,
};
use crate::proto::session::v1::{
    session_service_client::SessionServiceClient, CreateSessionRequest,
};

pub struct Plan {
    pub prism: PathBuf,
    pub config: Option<PathBuf>,
    pub sessions: u64,
    pub api_key: String,
    pub config_name: String,
}

#[derive(Debug)]
pub struct Figures {
    pub start_to_serving: Duration,
    pub rss_before: u64,
    pub rss_after: u64,
    pub sessions: u64,
    pub failed: u64,
}

impl Figures {
    pub fn per_session(&self) -> f64 {
        self.rss_after.saturating_sub(self.rss_before) as f64 / self.sessions.max(1) as f64
    }

    pub fn describe(&self) -> String {
        format!(
            "start to serving: {:.1} ms\nresident memory: {:.1} MiB before, {:.1} MiB with {} idle \
             sessions ({} failed to open)\nper idle session: {:.0} bytes",
            self.start_to_serving.as_secs_f64() * 1e3,
            self.rss_before as f64 / 1048576.0,
            self.rss_after as f64 / 1048576.0,
            self.sessions,
            self.failed,
            self.per_session()
        )
    }
}

fn rss_bytes(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("cannot read the gateway's memory: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| "no VmRSS in /proc status".to_string())
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

struct CreateWorker {
    client: SessionServiceClient<tonic::transport::Channel>,
    request: CreateSessionRequest,
}

impl Worker for CreateWorker {
    fn call(&mut self, _: u64) -> BoxFuture<'_, (Code, Option<String>)> {
        Box::pin(async move {
            match self.client.create_session(self.request.clone()).await {
                Ok(_) => (Code::Ok, None),
                Err(s) => (s.code(), Some(s.message().to_string())),
            }
        })
    }
}

pub async fn measure(plan: &Plan) -> Result<Figures, String> {
    let port = free_port()?;
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let mut cmd = tokio::process::Command::new(&plan.prism);
    cmd.args(["serve", "--listen", &addr.to_string()])
        .args(["--admin-listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    if let Some(c) = &plan.config {
        cmd.arg("--config").arg(c);
    }
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", plan.prism.display()))?;
    let pid = child.id().ok_or("the gateway exited at once")?;
    let channel = loop {
        if start.elapsed() > Duration::from_secs(30) {
            return Err("the gateway did not serve within 30 s".into());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("the gateway exited: {status}"));
        }
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?;
        if let Ok(channel) = endpoint.connect().await {
            let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
            let serving = health
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .is_ok_and(|r| r.into_inner().status == 1);
            if serving {
                break channel;
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let start_to_serving = start.elapsed();

    let request =
        super::session_request(&plan.api_key, &plan.config_name, "prism-loadtest-footprint");
    // One session first, so lazily built state is in the baseline.
    SessionServiceClient::new(channel.clone())
        .create_session(request.clone())
        .await
        .map_err(|e| format!("cannot open a session: {e}"))?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss_bytes(pid)?;
    let channels = runner::connect(addr, 4).await?;
    let bounds = Bounds {
        total: Some(plan.sessions.clamp(1, super::scenario::MAX_TOTAL)),
        duration: None,
        concurrency: 64,
        connections: 4,
        rps: None,
        timeout: Duration::from_secs(20),
    };
    let channels = Arc::new(channels);
    let outcome = runner::drive(&bounds, |i| CreateWorker {
        client: SessionServiceClient::new(channels[i % channels.len()].clone()),
        request: request.clone(),
    })
    .await;
    let failed = outcome
        .samples
        .iter()
        .filter(|s| s.code != Code::Ok)
        .count() as u64;
    // Let allocator and actors settle before reading.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = rss_bytes(pid)?;
    let _ = child.kill().await;
    Ok(Figures {
        start_to_serving,
        rss_before,
        rss_after,
        sessions: outcome.samples.len() as u64 - failed,
        failed,
    })
}
