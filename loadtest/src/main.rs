//! `prism-loadtest`: Prism's ghz-compatible load runner (the library of
//! this crate does the work; loadtest/README.md shows the commands).

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};
use prism_loadtest::{self as loadtest, footprint, scenario::Scenario, Comparison, Overrides};

#[derive(Parser)]
#[command(
    name = "prism-loadtest",
    version,
    about = "Runs ghz-format scenarios against Prism"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct Limits {
    /// Target host:port (replaces the scenario's `host`; without it only
    /// loopback hosts are loaded).
    #[arg(long)]
    host: Option<String>,
    /// Number of requests (replaces the scenario's total and duration).
    #[arg(long, short = 'n')]
    total: Option<u64>,
    /// Run for this long, e.g. 10s (replaces the scenario's duration).
    #[arg(long, short = 'z', value_parser = loadtest::scenario::parse_duration)]
    duration: Option<Duration>,
    /// Concurrent workers.
    #[arg(long, short = 'c')]
    concurrency: Option<usize>,
    /// HTTP/2 connections the workers share.
    #[arg(long)]
    connections: Option<usize>,
    /// Requests per second over all workers.
    #[arg(long)]
    rps: Option<u64>,
    /// The run's name in reports and tables.
    #[arg(long)]
    name: Option<String>,
}

impl Limits {
    fn overrides(&self) -> Overrides {
        Overrides {
            host: self.host.clone(),
            total: self.total,
            duration: self.duration,
            concurrency: self.concurrency,
            connections: self.connections,
            rps: self.rps,
            name: self.name.clone(),
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Summary,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run scenarios; print ghz's summary (or JSON report).
    Run {
        /// Scenario files (ghz JSON config format).
        #[arg(required = true)]
        scenarios: Vec<PathBuf>,
        #[command(flatten)]
        limits: Limits,
        /// What to print.
        #[arg(long, short = 'O', value_enum, default_value = "summary")]
        format: Format,
        /// Write ghz's JSON report here (a directory when several scenarios
        /// run: one `<file stem>.json` each).
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
        /// Also run the scenario against a no-op server with the same
        /// message shapes, and print the ratio.
        #[arg(long)]
        baseline: bool,
        /// Also run it against a minimal tonic KeyValue service (a DashMap
        /// behind the generated server; KeyValue Get and Set scenarios).
        #[arg(long)]
        minimal_kv: bool,
        /// Run the gateway and each server baseline this many times, in
        /// turn, and compare their medians.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
        rounds: u32,
        /// Also GET a value of the same size from this Redis directly, at
        /// the same rate, and print the added latency.
        #[arg(long)]
        redis_direct: Option<String>,
        /// Write the comparison (for `table`) here (a directory with several
        /// scenarios).
        #[arg(long)]
        compare_out: Option<PathBuf>,
    },
    /// Open the scenario's session (and seed it) and write a plain ghz
    /// config with the token filled in; subscribers, if any, are held until
    /// Ctrl-C or --hold.
    Prepare {
        scenario: PathBuf,
        #[command(flatten)]
        limits: Limits,
        /// Where to write the ghz config.
        #[arg(long)]
        out: PathBuf,
        /// Keep the subscribers (and this process) this long.
        #[arg(long, value_parser = loadtest::scenario::parse_duration, default_value = "10m")]
        hold: Duration,
    },
    /// Time the scenario's calls alone, then beside another session of
    /// the same namespace running the heaviest calls of each API in turn
    /// (KeyValue, Queue, PubSub, Reader, Transact).
    Neighbour {
        scenario: PathBuf,
        #[command(flatten)]
        limits: Limits,
        #[command(flatten)]
        neighbour: loadtest::neighbour::Neighbour,
    },
    /// Print the markdown table of saved comparisons.
    Table { comparisons: Vec<PathBuf> },
    /// Serve the minimal tonic KeyValue baseline on its own (for other
    /// load generators, or to watch its CPU beside the gateway's) until
    /// Ctrl-C. Loopback only.
    MinimalKv {
        /// Loopback port to listen on (0: any free one, printed).
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
    /// Start a gateway binary and measure start-to-serving and the memory
    /// of idle sessions.
    Footprint {
        /// The `prism` binary to start.
        #[arg(long)]
        prism: PathBuf,
        /// Its config file (the embedded default when left out).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Idle sessions to open.
        #[arg(long, default_value_t = 100_000)]
        sessions: u64,
        #[arg(long, default_value = "prism-dev-key")]
        api_key: String,
        #[arg(long, default_value = "user-profiles")]
        config_name: String,
        /// How long to watch the idle sessions for the CPU they cost.
        #[arg(long, default_value = "10s", value_parser = loadtest::scenario::parse_duration)]
        idle_window: std::time::Duration,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("prism-loadtest: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> Result<(), String> {
    match command {
        Command::Run {
            scenarios,
            limits,
            format,
            output,
            baseline,
            minimal_kv,
            rounds,
            redis_direct,
            compare_out,
        } => {
            let baselines = loadtest::Baselines {
                noop: baseline,
                minimal_kv,
                redis_direct: redis_direct.as_deref(),
                rounds,
            };
            let many = scenarios.len() > 1;
            let path_for = |dir: &Option<PathBuf>, scenario: &PathBuf| {
                dir.as_ref().map(|d| {
                    if many {
                        let stem = scenario.file_stem().unwrap_or_default();
                        d.join(stem).with_extension("json")
                    } else {
                        d.clone()
                    }
                })
            };
            if many {
                for dir in [&output, &compare_out].into_iter().flatten() {
                    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                }
            }
            for path in &scenarios {
                let scenario = Scenario::load(path)?;
                let prepared = loadtest::prepare(scenario, &limits.overrides()).await?;
                let result = loadtest::run_with_baselines(&prepared, baselines).await;
                prepared.finish().await;
                let (report, comparison) = result?;
                let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
                match format {
                    Format::Summary => print!("{}", report.summary()),
                    Format::Json => println!("{json}"),
                }
                if let Some(out) = path_for(&output, path) {
                    std::fs::write(&out, &json).map_err(|e| format!("{}: {e}", out.display()))?;
                }
                if baseline || minimal_kv || redis_direct.is_some() {
                    print!("{}", comparison.table());
                }
                if let Some(out) = path_for(&compare_out, path) {
                    let text =
                        serde_json::to_string_pretty(&comparison).map_err(|e| e.to_string())?;
                    std::fs::write(&out, text).map_err(|e| format!("{}: {e}", out.display()))?;
                }
            }
            Ok(())
        }
        Command::Prepare {
            scenario,
            limits,
            out,
            hold,
        } => {
            let scenario = Scenario::load(&scenario)?;
            let has_subscribers = scenario
                .prism
                .as_ref()
                .is_some_and(|p| p.subscribers.is_some());
            let prepared = loadtest::prepare(scenario, &limits.overrides()).await?;
            std::fs::write(&out, prepared.ghz_config()?)
                .map_err(|e| format!("{}: {e}", out.display()))?;
            println!("wrote {}", out.display());
            if has_subscribers {
                println!("holding the subscribers for {hold:?}; Ctrl-C ends them");
                tokio::select! {
                    _ = tokio::time::sleep(hold) => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
                prepared.finish().await;
            }
            // Without subscribers the session stays open for ghz; it expires
            // after its namespace's idle timeout.
            Ok(())
        }
        Command::Neighbour {
            scenario,
            limits,
            neighbour,
        } => {
            let scenario = Scenario::load(&scenario)?;
            let prepared = loadtest::prepare(scenario, &limits.overrides()).await?;
            let measured = loadtest::neighbour::measure(&prepared, &neighbour).await;
            let title = prepared.scenario.title();
            prepared.finish().await;
            print!("{}", neighbour_table(&title, neighbour.keys, &measured?));
            Ok(())
        }
        Command::MinimalKv { port } => {
            let server = loadtest::minimal_kv::start_on(port)
                .await
                .map_err(|e| format!("cannot start the minimal KeyValue server: {e}"))?;
            println!("minimal KeyValue service on {}", server.addr);
            tokio::signal::ctrl_c().await.map_err(|e| e.to_string())?;
            Ok(())
        }
        Command::Table { comparisons } => {
            let mut rows = Vec::new();
            for path in comparisons {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                let row: Comparison =
                    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
                rows.push(row);
            }
            print!("{}", loadtest::markdown_table(&rows));
            Ok(())
        }
        Command::Footprint {
            prism,
            config,
            sessions,
            api_key,
            config_name,
            idle_window,
        } => {
            let figures = footprint::measure(&footprint::Plan {
                idle_window,
                admin_token: std::env::var("PRISM_ADMIN_TOKEN").ok(),
                prism,
                config,
                sessions,
                api_key,
                config_name,
            })
            .await?;
            println!("{}", figures.describe());
            Ok(())
        }
    }
}

/// The neighbour run as printed (and pasted into the figures).
fn neighbour_table(title: &str, keys: u64, runs: &[loadtest::neighbour::Run]) -> String {
    let mut out = format!(
        "\n{title}: alone, then beside a neighbour session running one API's heaviest calls\n\
         ({keys} keys; {} queue messages and table rows)\n  {:<22}{:>10}{:>10}{:>10}{:>8}\n",
        keys / 10,
        "run",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors"
    );
    for run in runs {
        let s = &run.summary;
        let name = run
            .beside
            .map_or("alone".to_string(), |api| format!("beside {}", api.name()));
        out.push_str(&format!(
            "  {name:<22}{:>10.0}{:>10.3}{:>10.3}{:>8}\n",
            s.rps, s.p50_ms, s.p99_ms, s.failures
        ));
        if !run.work.is_empty() {
            out.push_str(&format!("    meanwhile: {}\n", run.work));
        }
    }
    out
}
