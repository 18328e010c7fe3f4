//! `prism-loadtest`: runs ghz-format scenario files against a gateway and
//! reports the way ghz does, and measures what the gateway adds over a
//! no-op server with the same message shapes and over the backend itself.
//!
//! A run: [`prepare`] (target check, connections, the scenario's session,
//! seed calls, subscribers), [`Prepared::run`], [`Prepared::finish`].
//! Only loopback addresses, or the host given on the command line, are
//! ever targeted, and every run is bounded in count or time.

pub mod baseline;
pub mod call;
pub mod footprint;
pub mod minimal_kv;
pub mod neighbour;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod template;

use std::{
    collections::HashMap,
    net::{SocketAddr, ToSocketAddrs},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tonic::transport::Channel;

use call::Call;
use prism_proto::session::v1::{
    create_session_request::{Auth, Config},
    session_service_client::SessionServiceClient,
    CloseSessionRequest, CreateSessionRequest,
};
use report::Report;
use scenario::{Bounds, Scenario};

/// Command-line values that replace the file's.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub host: Option<String>,
    pub total: Option<u64>,
    pub duration: Option<Duration>,
    pub concurrency: Option<usize>,
    pub connections: Option<usize>,
    pub rps: Option<u64>,
    /// The run's name in reports (e.g. the same scenario on another backend).
    pub name: Option<String>,
}

impl Overrides {
    /// The scenario with these values in place (a total given here drops
    /// the file's duration, and the other way round).
    pub fn apply(&self, mut s: Scenario) -> Scenario {
        if let Some(t) = self.total {
            s.total = Some(t);
            s.duration = None;
        }
        if let Some(d) = self.duration {
            s.duration = Some(d);
        }
        if let Some(c) = self.concurrency {
            s.concurrency = c;
        }
        if let Some(c) = self.connections {
            s.connections = c;
        }
        if self.rps.is_some() {
            s.rps = self.rps;
        }
        if self.host.is_some() {
            s.host = self.host.clone();
        }
        if self.name.is_some() {
            s.name = self.name.clone();
        }
        s
    }
}

/// The address to load: the host given on the command line (the user's
/// explicit choice), or the scenario's, which must be a loopback address.
pub fn target(scenario_host: Option<&str>, given: Option<&str>) -> Result<SocketAddr, String> {
    let (host, explicit) = match (given, scenario_host) {
        (Some(h), _) => (h, true),
        (None, Some(h)) => (h, false),
        (None, None) => return Err("no host: set `host` in the scenario or pass --host".into()),
    };
    let addr = host
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve `{host}`: {e}"))?
        .next()
        .ok_or_else(|| format!("`{host}` resolves to nothing"))?;
    if !explicit && !addr.ip().is_loopback() {
        return Err(format!(
            "the scenario targets {addr}, which is not a loopback address; pass --host to load it \
             on purpose"
        ));
    }
    Ok(addr)
}

/// A scenario ready to run: connected, its session open, seeded, with its
/// subscribers listening.
pub struct Prepared {
    pub scenario: Scenario,
    pub bounds: Bounds,
    pub addr: SocketAddr,
    pub channels: Vec<Channel>,
    pub call: Arc<Call>,
    pub session_token: Option<String>,
    subscribers: tokio::task::JoinSet<()>,
    /// Messages the subscribers received.
    pub delivered: Arc<AtomicU64>,
}

pub async fn prepare(scenario: Scenario, overrides: &Overrides) -> Result<Prepared, String> {
    let scenario = overrides.apply(scenario);
    if !scenario.insecure {
        return Err(
            "the scenario asks for TLS (`insecure` is false); prism-loadtest speaks plaintext \
             HTTP/2 only: set \"insecure\": true"
                .into(),
        );
    }
    let bounds = scenario.bounds()?;
    let addr = target(scenario.host.as_deref(), overrides.host.as_deref())?;
    let pool = call::descriptors();
    let items = scenario.data_items();
    // Bad call names or data fail here, before a session is opened.
    Call::new(&pool, &scenario.call, &items, &scenario.metadata, "")?;
    let channels = runner::connect(addr, bounds.connections).await?;
    let setup = scenario.prism.clone().unwrap_or_default();
    let session_token = match &setup.session {
        None => None,
        Some(s) => Some(open_session(channels[0].clone(), s).await?),
    };
    let token = session_token.clone().unwrap_or_default();
    let mut prepared = Prepared {
        call: Arc::new(Call::new(
            &pool,
            &scenario.call,
            &items,
            &scenario.metadata,
            &token,
        )?),
        scenario,
        bounds,
        addr,
        channels,
        session_token,
        subscribers: tokio::task::JoinSet::new(),
        delivered: Arc::default(),
    };
    if let Err(e) = prepared.set_up(&setup, &pool, &token).await {
        // Close what was opened rather than leave it to expire.
        prepared.finish().await;
        return Err(e);
    }
    Ok(prepared)
}

impl Prepared {
    /// Seeds, then starts the subscribers (each accepted before the next).
    async fn set_up(
        &mut self,
        setup: &scenario::Setup,
        pool: &prost_reflect::DescriptorPool,
        token: &str,
    ) -> Result<(), String> {
        if let Some(seed) = &setup.seed {
            seed_with(seed, pool, token, &self.channels[..1]).await?;
        }
        if let Some(subs) = &setup.subscribers {
            let items = vec![subs.data.clone()];
            let sub_call = Arc::new(Call::new(
                pool,
                &subs.call,
                &items,
                &Default::default(),
                token,
            )?);
            if !sub_call.method.is_server_streaming() {
                return Err(format!("subscribers call {} is not a stream", subs.call));
            }
            for i in 0..subs.count.min(scenario::MAX_CONCURRENCY) {
                let (ready_tx, ready) = tokio::sync::oneshot::channel();
                let channel = self.channels[i % self.channels.len()].clone();
                let (sub_call, delivered) = (sub_call.clone(), self.delivered.clone());
                self.subscribers
                    .spawn(subscriber(sub_call, channel, delivered, ready_tx));
                ready
                    .await
                    .map_err(|_| "a subscriber ended before it was ready".to_string())?
                    .map_err(|e| format!("subscribing with {} failed: {e}", subs.call))?;
            }
        }
        Ok(())
    }
}

/// Makes the scenario's seed calls (and checks them) over `channels`.
async fn seed_with(
    seed: &scenario::Seed,
    pool: &prost_reflect::DescriptorPool,
    token: &str,
    channels: &[Channel],
) -> Result<(), String> {
    let items = match &seed.data {
        serde_json::Value::Array(items) => items.clone(),
        other => vec![other.clone()],
    };
    let seed_call = Call::new(pool, &seed.call, &items, &Default::default(), token)?;
    let seed_bounds = Bounds {
        total: Some(seed.total.clamp(1, scenario::MAX_TOTAL)),
        duration: None,
        concurrency: 8.min(seed.total.max(1) as usize),
        connections: 1,
        rps: None,
        timeout: Duration::from_secs(20),
    };
    let outcome = runner::run(Arc::new(seed_call), channels, &seed_bounds).await;
    if let Some(bad) = outcome.samples.iter().find(|s| s.error.is_some()) {
        return Err(format!(
            "seeding with {} failed: {:?} {}",
            seed.call,
            bad.code,
            bad.error.clone().unwrap_or_default()
        ));
    }
    Ok(())
}

/// Holds one subscription open, counting what arrives; reports once the
/// gateway has accepted it.
async fn subscriber(
    call: Arc<Call>,
    channel: Channel,
    delivered: Arc<AtomicU64>,
    ready: tokio::sync::oneshot::Sender<Result<(), String>>,
) {
    let mut grpc = tonic::client::Grpc::new(channel);
    let body = match call.request(0, 0) {
        Ok(b) => b,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    if let Err(e) = grpc.ready().await {
        let _ = ready.send(Err(e.to_string()));
        return;
    }
    let started = grpc
        .server_streaming(
            tonic::Request::new(body),
            call.path.clone(),
            call::BytesCodec,
        )
        .await;
    let mut stream = match started {
        Ok(s) => {
            let _ = ready.send(Ok(()));
            s.into_inner()
        }
        Err(status) => {
            let _ = ready.send(Err(status.to_string()));
            return;
        }
    };
    while let Ok(Some(_)) = stream.message().await {
        delivered.fetch_add(1, Ordering::Relaxed);
    }
}

/// CreateSession with an API key and a named config.
pub fn session_request(api_key: &str, config_name: &str, client_id: &str) -> CreateSessionRequest {
    CreateSessionRequest {
        auth: Some(Auth::ApiKey(api_key.to_string())),
        config: Some(Config::ConfigName(config_name.to_string())),
        client_id: client_id.to_string(),
        ..Default::default()
    }
}

async fn open_session(channel: Channel, s: &scenario::SessionSetup) -> Result<String, String> {
    let created = SessionServiceClient::new(channel)
        .create_session(session_request(
            &s.api_key,
            &s.config_name,
            "prism-loadtest",
        ))
        .await
        .map_err(|e| format!("cannot open the scenario's session: {e}"))?;
    Ok(created.into_inner().session_token)
}

impl Prepared {
    /// The measured run against the prepared target.
    pub async fn run(&self) -> (Report, runner::Outcome) {
        let outcome = runner::run(self.call.clone(), &self.channels, &self.bounds).await;
        let report = Report::new(
            &self.scenario,
            &self.addr.to_string(),
            &self.bounds,
            &outcome,
        );
        (report, outcome)
    }

    /// The same calls against another address (the no-op baseline).
    pub async fn run_against(&self, addr: SocketAddr) -> Result<Report, String> {
        let channels = runner::connect(addr, self.bounds.connections).await?;
        let outcome = runner::run(self.call.clone(), &channels, &self.bounds).await;
        Ok(Report::new(
            &self.scenario,
            &addr.to_string(),
            &self.bounds,
            &outcome,
        ))
    }

    /// Ends the subscribers and closes the session.
    pub async fn finish(mut self) {
        self.subscribers.shutdown().await;
        if let Some(token) = self.session_token.take() {
            let _ = SessionServiceClient::new(self.channels[0].clone())
                .close_session(CloseSessionRequest {
                    session_token: token,
                    force: true,
                })
                .await;
        }
    }

    /// The scenario as a plain ghz config: the session token filled in,
    /// the `x-prism` block removed, every other template left to ghz.
    pub fn ghz_config(&self) -> Result<String, String> {
        let mut plain = self.scenario.clone();
        plain.prism = None;
        plain.host = Some(self.addr.to_string());
        let text = serde_json::to_string_pretty(&plain).map_err(|e| e.to_string())?;
        Ok(template::Template::with_session_token(
            &text,
            self.session_token.as_deref().unwrap_or(""),
        ))
    }
}

/// A gateway run beside its baselines, as printed and as saved for the
/// README table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Comparison {
    pub scenario: String,
    /// Runs per side (medians when more than one).
    #[serde(default = "one")]
    pub rounds: u32,
    pub gateway: Summary,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noop: Option<Summary>,
    /// The minimal tonic KeyValue service's figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimal: Option<Summary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct: Option<Summary>,
}

/// The figures a comparison keeps of a report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub count: u64,
    pub failures: u64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

fn one() -> u32 {
    1
}

impl Summary {
    /// Each figure's median over several runs (the mean of the middle
    /// two for an even count); counts added up.
    pub fn median(runs: &[Summary]) -> Summary {
        fn mid(mut v: Vec<f64>) -> f64 {
            v.sort_by(f64::total_cmp);
            match v.len() {
                0 => 0.0,
                n if n % 2 == 1 => v[n / 2],
                n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
            }
        }
        Summary {
            count: runs.iter().map(|r| r.count).sum(),
            failures: runs.iter().map(|r| r.failures).sum(),
            rps: mid(runs.iter().map(|r| r.rps).collect()),
            p50_ms: mid(runs.iter().map(|r| r.p50_ms).collect()),
            p99_ms: mid(runs.iter().map(|r| r.p99_ms).collect()),
        }
    }
}

impl From<&Report> for Summary {
    fn from(r: &Report) -> Self {
        Summary {
            count: r.count,
            failures: r.failures(),
            rps: r.rps,
            p50_ms: r.percentile(50).as_secs_f64() * 1e3,
            p99_ms: r.percentile(99).as_secs_f64() * 1e3,
        }
    }
}

impl Comparison {
    /// The comparison printed after a `--baseline` run.
    pub fn table(&self) -> String {
        let mut out = format!(
            "\n{}{}\n  {:<18}{:>12}{:>12}{:>12}{:>10}\n",
            self.scenario,
            match self.rounds {
                0 | 1 => String::new(),
                n => format!(" (medians of {n} rounds taken in turn)"),
            },
            "target",
            "req/s",
            "p50 ms",
            "p99 ms",
            "errors"
        );
        let mut row = |name: &str, s: &Summary| {
            out.push_str(&format!(
                "  {:<18}{:>12.0}{:>12.3}{:>12.3}{:>10}\n",
                name, s.rps, s.p50_ms, s.p99_ms, s.failures
            ));
        };
        row("gateway", &self.gateway);
        if let Some(n) = &self.noop {
            row("no-op baseline", n);
        }
        if let Some(m) = &self.minimal {
            row("minimal tonic KV", m);
        }
        if let Some(d) = &self.direct {
            row("redis direct", d);
        }
        let ratios = [("no-op", &self.noop), ("minimal tonic KV", &self.minimal)];
        for (name, baseline) in ratios {
            if let Some(b) = baseline {
                out.push_str(&format!(
                    "  ratio to {name}: {:.2}x req/s; p50 {:+.3} ms, p99 {:+.3} ms\n",
                    self.gateway.rps / b.rps.max(f64::MIN_POSITIVE),
                    self.gateway.p50_ms - b.p50_ms,
                    self.gateway.p99_ms - b.p99_ms
                ));
            }
        }
        if let Some(d) = &self.direct {
            out.push_str(&format!(
                "  added over redis: p50 {:+.3} ms, p99 {:+.3} ms\n",
                self.gateway.p50_ms - d.p50_ms,
                self.gateway.p99_ms - d.p99_ms
            ));
        }
        out
    }

    /// One markdown row: scenario, RPS, p50, p99, baseline RPS, ratio.
    pub fn markdown_row(&self) -> String {
        let noop = self.noop.as_ref();
        let direct = self.direct.as_ref();
        format!(
            "| {} | {:.0} | {:.3} | {:.3} | {} | {} | {} |",
            self.scenario,
            self.gateway.rps,
            self.gateway.p50_ms,
            self.gateway.p99_ms,
            noop.map_or("–".into(), |n| format!(
                "{:.0} / {:.3} / {:.3}",
                n.rps, n.p50_ms, n.p99_ms
            )),
            noop.map_or("–".into(), |n| format!(
                "{:.2}×",
                self.gateway.rps / n.rps
            )),
            direct.map_or("–".into(), |d| format!(
                "{:+.3} / {:+.3}",
                self.gateway.p50_ms - d.p50_ms,
                self.gateway.p99_ms - d.p99_ms
            )),
        )
    }
}

/// The markdown table of several comparisons.
pub fn markdown_table(rows: &[Comparison]) -> String {
    let mut out = String::from(
        "| scenario | req/s | p50 ms | p99 ms | no-op req/s / p50 / p99 | ratio to no-op | added over Redis p50 / p99 ms |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        out.push_str(&r.markdown_row());
        out.push('\n');
    }
    out
}

/// What a gateway run is set beside, in the same run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Baselines<'a> {
    /// The no-op server with the same message shapes.
    pub noop: bool,
    /// The minimal tonic KeyValue service (KeyValue Get and Set only).
    pub minimal_kv: bool,
    /// Redis GETs of a value of the same size, from this URL.
    pub redis_direct: Option<&'a str>,
    /// Runs of the gateway and of each server baseline, taken in turn;
    /// the comparison keeps each side's medians.
    pub rounds: u32,
}

/// Runs a prepared scenario, then each of `baselines` with the same
/// bounds; the gateway's report and the comparison.
pub async fn run_with_baselines(
    prepared: &Prepared,
    baselines: Baselines<'_>,
) -> Result<(Report, Comparison), String> {
    let minimal_call = matches!(
        prepared.call.path.path(),
        "/prism.keyvalue.v1.KeyValueService/Get" | "/prism.keyvalue.v1.KeyValueService/Set"
    );
    if baselines.minimal_kv && !minimal_call {
        return Err(format!(
            "the minimal KeyValue baseline serves KeyValue Get and Set only, not {}",
            prepared.call.path
        ));
    }
    let rounds = baselines.rounds.max(1);
    let (mut report, outcome) = prepared.run().await;
    let mut gateway = vec![Summary::from(&report)];
    let mut noop = None;
    if baselines.noop {
        let mut replies = HashMap::new();
        if let Some(reply) = outcome.first_reply.clone() {
            replies.insert(prepared.call.path.to_string(), reply);
        }
        let server = baseline::start_noop(call::descriptors(), replies)
            .await
            .map_err(|e| format!("cannot start the no-op server: {e}"))?;
        noop = Some(server);
    }
    let mut minimal = None;
    if baselines.minimal_kv {
        let server = minimal_kv::start()
            .await
            .map_err(|e| format!("cannot start the minimal KeyValue server: {e}"))?;
        let seed = prepared
            .scenario
            .prism
            .as_ref()
            .and_then(|p| p.seed.as_ref());
        if let Some(seed) = seed {
            let channels = runner::connect(server.addr, 1).await?;
            seed_with(seed, &call::descriptors(), "", &channels).await?;
        }
        minimal = Some(server);
    }
    // Rounds in turn (gateway, then each baseline), so a slow spell of
    // this shared machine falls on every side alike.
    let (mut noops, mut minimals) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        if round > 0 {
            report = prepared.run().await.0;
            gateway.push(Summary::from(&report));
        }
        if let Some(server) = &noop {
            noops.push(Summary::from(&prepared.run_against(server.addr).await?));
        }
        if let Some(server) = &minimal {
            minimals.push(Summary::from(&prepared.run_against(server.addr).await?));
        }
    }
    let mut comparison = Comparison {
        scenario: prepared.scenario.title(),
        rounds,
        gateway: Summary::median(&gateway),
        noop: (!noops.is_empty()).then(|| Summary::median(&noops)),
        minimal: (!minimals.is_empty()).then(|| Summary::median(&minimals)),
        direct: None,
    };
    if let Some(url) = baselines.redis_direct {
        let value = outcome
            .first_reply
            .as_ref()
            .and_then(|r| r.first())
            .map(|b| b.to_vec())
            .unwrap_or_default();
        let direct =
            baseline::redis_direct(url, "prism-loadtest:direct", &value, &prepared.bounds).await?;
        let report = Report::new(&prepared.scenario, url, &prepared.bounds, &direct);
        comparison.direct = Some(Summary::from(&report));
    }
    Ok((report, comparison))
}
