//! Start-to-serving time and idle-session memory of a gateway process:
//! starts `prism serve` on a loopback port, times the spawn until the gRPC
//! health check answers SERVING, then opens N sessions and reads the
//! process's resident memory (`VmRSS`) before and after, and the CPU it
//! spends while they sit idle. With the admin
//! token (`PRISM_ADMIN_TOKEN`) it also times `/metrics` scrapes with 100
//! sessions open and with N, which must cost about the same.

use std::{path::PathBuf, process::Stdio, sync::Arc, time::Duration};

use futures::future::BoxFuture;
use tokio::time::Instant;
use tonic::Code;

use super::{
    runner::{self, Worker},
    scenario::Bounds,
};
use prism_proto::session::v1::{
    session_service_client::SessionServiceClient, CreateSessionRequest,
};

pub struct Plan {
    /// The admin token the gateway runs with, to time `/metrics` scrapes.
    pub admin_token: Option<String>,
    pub prism: PathBuf,
    pub config: Option<PathBuf>,
    pub sessions: u64,
    pub api_key: String,
    pub config_name: String,
    /// How long the idle sessions are watched for the CPU they cost.
    pub idle_window: Duration,
}

#[derive(Debug)]
pub struct Figures {
    pub start_to_serving: Duration,
    pub rss_before: u64,
    pub rss_after: u64,
    pub sessions: u64,
    pub failed: u64,
    /// Median `/metrics` scrape with 100 sessions open, and with all.
    pub scrape: Option<(Duration, Duration)>,
    /// CPU the process used with every session idle, as a fraction of one
    /// core, and over how long.
    pub idle_cpu: f64,
    pub idle_window: Duration,
}

impl Figures {
    pub fn per_session(&self) -> f64 {
        self.rss_after.saturating_sub(self.rss_before) as f64 / self.sessions.max(1) as f64
    }

    pub fn describe(&self) -> String {
        format!(
            "start to serving: {:.1} ms\nresident memory: {:.1} MiB before, {:.1} MiB with {} idle \
             sessions ({} failed to open)\nper idle session: {:.0} bytes\n\
             CPU while they sit idle: {:.2} % of a core over {:.0} s",
            self.start_to_serving.as_secs_f64() * 1e3,
            self.rss_before as f64 / 1048576.0,
            self.rss_after as f64 / 1048576.0,
            self.sessions,
            self.failed,
            self.per_session(),
            self.idle_cpu * 100.0,
            self.idle_window.as_secs_f64()
        ) + &self.scrape.map_or(String::new(), |(few, all)| {
            format!(
                "\n/metrics scrape: {:.2} ms with 100 sessions, {:.2} ms with {} ({:.2}x)",
                few.as_secs_f64() * 1e3,
                all.as_secs_f64() * 1e3,
                self.sessions + 1,
                all.as_secs_f64() / few.as_secs_f64().max(1e-9)
            )
        })
    }
}

/// The median of nine `/metrics` scrapes on the admin listener.
async fn time_scrape(admin: std::net::SocketAddr, token: &str) -> Result<Duration, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut times = Vec::new();
    for _ in 0..9 {
        let start = Instant::now();
        let mut stream = tokio::net::TcpStream::connect(admin)
            .await
            .map_err(|e| format!("cannot reach the admin listener: {e}"))?;
        let request = format!(
            "GET /metrics HTTP/1.1\r\nHost: {admin}\r\nAuthorization: Bearer {token}\r\n\
             Connection: close\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .map_err(|e| e.to_string())?;
        if !response.starts_with(b"HTTP/1.1 200") {
            return Err(format!(
                "/metrics answered: {}",
                String::from_utf8_lossy(&response[..response.len().min(80)])
            ));
        }
        times.push(start.elapsed());
    }
    times.sort();
    Ok(times[times.len() / 2])
}

/// Opens `n` sessions with `request` over `channels`; how many failed.
async fn open_sessions(
    channels: &Arc<Vec<tonic::transport::Channel>>,
    request: &CreateSessionRequest,
    n: u64,
) -> u64 {
    let bounds = Bounds {
        total: Some(n.clamp(1, super::scenario::MAX_TOTAL)),
        duration: None,
        concurrency: 64,
        connections: 4,
        rps: None,
        timeout: Duration::from_secs(20),
    };
    let outcome = runner::drive(&bounds, |i| CreateWorker {
        client: SessionServiceClient::new(channels[i % channels.len()].clone()),
        request: request.clone(),
    })
    .await;
    outcome
        .samples
        .iter()
        .filter(|s| s.code != Code::Ok)
        .count() as u64
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

/// CPU time the process has used so far (user and system), in clock
/// ticks of 1/100 s (Linux's `USER_HZ`).
fn cpu_ticks(pid: u32) -> Result<u64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("cannot read the gateway's CPU time: {e}"))?;
    // Fields after the command name (which may hold spaces), from field 3:
    // utime and stime are fields 14 and 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or("no command name in /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    match (tick(11), tick(12)) {
        (Some(user), Some(system)) => Ok(user + system),
        _ => Err("no CPU times in /proc stat".to_string()),
    }
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
    let admin: std::net::SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let mut cmd = tokio::process::Command::new(&plan.prism);
    cmd.args(["serve", "--listen", &addr.to_string()])
        .args(["--admin-listen", &admin.to_string()])
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
    let channels = Arc::new(runner::connect(addr, 4).await?);
    let mut failed = 0;
    let few = match &plan.admin_token {
        Some(token) => {
            failed += open_sessions(&channels, &request, 99).await;
            Some(time_scrape(admin, token).await?)
        }
        None => None,
    };
    let opened = plan
        .sessions
        .saturating_sub(if few.is_some() { 99 } else { 0 });
    failed += open_sessions(&channels, &request, opened).await;
    let all = match &plan.admin_token {
        Some(token) => Some(time_scrape(admin, token).await?),
        None => None,
    };
    // Let allocator and actors settle before reading.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = rss_bytes(pid)?;
    let (ticks, watched) = (cpu_ticks(pid)?, Instant::now());
    tokio::time::sleep(plan.idle_window).await;
    let idle_cpu =
        cpu_ticks(pid)?.saturating_sub(ticks) as f64 / 100.0 / watched.elapsed().as_secs_f64();
    let _ = child.kill().await;
    Ok(Figures {
        start_to_serving,
        rss_before,
        rss_after,
        sessions: plan.sessions - failed,
        failed,
        scrape: few.zip(all),
        idle_cpu,
        idle_window: plan.idle_window,
    })
}
