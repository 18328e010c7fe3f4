//! The command line: `prism serve`, `prism validate`, `prism registry backends`.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand, ValueEnum};
use tokio::net::TcpListener;

use crate::{
    backends,
    config::{validate, GatewayConfig, ProcessEnv, Source},
    runtime,
    server::{
        self,
        reload::{Origin, Reloader},
        Gateway, Listeners,
    },
    telemetry,
};

#[derive(Parser)]
#[command(name = "prism", version, about = "Prism data access gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the embedded default config when no --config is given).
    Serve {
        /// YAML config file.
        #[arg(long, env = "PRISM_CONFIG")]
        config: Option<PathBuf>,
        /// gRPC listen address [default: 0.0.0.0:8980, or server.listen].
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Admin HTTP listen address [default: 127.0.0.1:8981, or server.admin_listen].
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
        /// Log format.
        #[arg(long, env = "PRISM_LOG_FORMAT", default_value = "text")]
        log_format: LogFormat,
    },
    /// Check a config file; prints every check, exits non-zero on failure.
    Validate {
        /// YAML config file.
        file: PathBuf,
    },
    /// Show what this build implements.
    Registry {
        #[command(subcommand)]
        what: RegistryCommand,
    },
}

#[derive(Subcommand)]
enum RegistryCommand {
    /// The backend × interface matrix.
    Backends,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            listen,
            admin_listen,
            log_format,
        } => serve(config, listen, admin_listen, log_format),
        Command::Validate { file } => validate_file(&file),
        Command::Registry {
            what: RegistryCommand::Backends,
        } => {
            print!("{}", backends::registry_matrix());
            ExitCode::SUCCESS
        }
    }
}

impl From<LogFormat> for telemetry::LogFormat {
    fn from(f: LogFormat) -> Self {
        match f {
            LogFormat::Text => telemetry::LogFormat::Text,
            LogFormat::Json => telemetry::LogFormat::Json,
        }
    }
}

fn validate_file(file: &std::path::Path) -> ExitCode {
    let config = match GatewayConfig::from_file(file, &ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("FAIL {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = validate::validate(&config);
    print!("{}", report.text());
    if report.has_failures() {
        eprintln!("{}: configuration is invalid", file.display());
        ExitCode::FAILURE
    } else {
        println!("{}: configuration is valid", file.display());
        ExitCode::SUCCESS
    }
}

fn serve(
    path: Option<PathBuf>,
    listen: Option<SocketAddr>,
    admin_listen: Option<SocketAddr>,
    log_format: LogFormat,
) -> ExitCode {
    let mut config = match GatewayConfig::load_validated(path.as_deref(), &ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(addr) = listen {
        config.server.listen = addr;
    }
    if let Some(addr) = admin_listen {
        config.server.admin_listen = addr;
    }
    let origin = Origin {
        source: path.map_or(Source::Embedded, Source::File),
        listen,
        admin_listen,
    };
    let otlp = config
        .server
        .otlp_endpoint
        .clone()
        .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
        .filter(|e| !e.is_empty());
    let result = runtime::block_on_multi_thread(async move {
        // Inside the runtime: the OTLP exporter's client lives on it.
        let telemetry = telemetry::init(
            log_format.into(),
            config.server.log_level.as_deref(),
            otlp.as_deref(),
        )?;
        let served = run(config, origin).await;
        telemetry.shutdown().await;
        served
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: GatewayConfig, origin: Origin) -> Result<(), String> {
    {
        let grpc = TcpListener::bind(config.server.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", config.server.listen))?;
        let admin = TcpListener::bind(config.server.admin_listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", config.server.admin_listen))?;
        let gateway =
            std::sync::Arc::new(Gateway::start_from(config, origin).map_err(|e| e.to_string())?);
        // SIGHUP reloads the config; listened for before the gateway
        // serves (its default action would end the process), in a task
        // that ends with the gateway.
        let reloads = tokio::spawn(reload_on_hangup(hangups()?, gateway.reloader.clone()));
        let served = server::run(
            gateway,
            Listeners {
                grpc,
                admin: Some(admin),
            },
            shutdown_signal(),
        )
        .await
        .map_err(|e| e.to_string());
        reloads.abort();
        let _ = reloads.await;
        served
    }
}

#[cfg(unix)]
type Hangups = tokio::signal::unix::Signal;
#[cfg(not(unix))]
type Hangups = ();

/// SIGHUP, listened for from now on.
fn hangups() -> Result<Hangups, String> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        signal(SignalKind::hangup()).map_err(|e| format!("listening for SIGHUP: {e}"))
    }
    #[cfg(not(unix))]
    Ok(())
}

/// Reloads the config on each SIGHUP, until aborted. A refused file is
/// logged; the running config stays.
async fn reload_on_hangup(hangups: Hangups, reloader: std::sync::Arc<Reloader>) {
    #[cfg(unix)]
    {
        let mut hangups = hangups;
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the config");
            if let Err(e) = reloader.reload().await {
                tracing::warn!(error = %e, "config reload refused; the running config stays");
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (hangups, reloader);
        std::future::pending::<()>().await
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
