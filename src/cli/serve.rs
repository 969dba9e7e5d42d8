//! The server side of the command: `serve` (logging, signals, the server until SIGTERM) and
//! `check-config`.

use std::{path::PathBuf, process::ExitCode};

use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use super::{Exit, args::LogFormat, exit};
use crate::{config::Config, server};

pub(crate) fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

pub(crate) async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => {
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

pub(crate) async fn serve(config: PathBuf, log_format: LogFormat) -> ExitCode {
    init_logging(log_format);
    let config = match Config::load(&config) {
        Ok(config) => config,
        Err(problems) => {
            for problem in &problems {
                tracing::error!(%problem, "configuration problem");
            }
            return exit(Exit::Usage);
        }
    };
    for warning in &config.warnings {
        tracing::warn!(%warning, "configuration warning");
    }
    let listen = config.listen;
    let drain_timeout = config.drain_timeout;
    let tls = config.tls.clone();
    let listener = match TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%listen, %error, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    let health = match config.health_listen {
        None => None,
        Some(address) => match TcpListener::bind(address).await {
            Ok(listener) => Some(listener),
            Err(error) => {
                tracing::error!(%address, %error, "cannot listen for health probes");
                return ExitCode::FAILURE;
            }
        },
    };
    let health_address = config.health_listen;
    let result = async {
        let (broker, auth, deliveries) = server::build(config).await?;
        let transport = match &tls {
            Some(tls) if tls.mutual() => "mTLS",
            Some(_) => "TLS",
            None => "plaintext",
        };
        tracing::info!(address = %listen, transport, health = ?health_address, "grant-broker serving");
        server::run(
            server::Listeners { api: listener, health },
            broker,
            auth,
            deliveries,
            shutdown_signal(),
            drain_timeout,
            tls.as_ref(),
        )
        .await
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "server stopped");
            ExitCode::FAILURE
        }
    }
}

pub(crate) fn check_config(path: PathBuf, explain: Option<PathBuf>) -> ExitCode {
    match Config::load(&path) {
        Ok(config) => {
            if let Some(cases) = explain {
                let report = std::fs::read_to_string(&cases)
                    .map_err(|error| format!("cannot read {}: {error}", cases.display()))
                    .and_then(|text| super::cases::run(&config, &text));
                match report {
                    Ok(report) => print!("{report}"),
                    Err(report) => {
                        eprint!("{report}");
                        if !report.ends_with('\n') {
                            eprintln!();
                        }
                        return exit(Exit::Usage);
                    }
                }
            }
            for warning in &config.warnings {
                eprintln!("warning: {warning}");
            }
            println!(
                "{}: ok ({} targets, {} callers, {} rules, {} identity issuers, {} webhooks, {} warning(s))",
                path.display(),
                config.targets.len(),
                config.callers.len(),
                config.rules.policy_count(),
                config.identity.issuers.len(),
                config.webhooks.len(),
                config.warnings.len()
            );
            ExitCode::SUCCESS
        }
        Err(problems) => {
            for problem in &problems {
                eprintln!("{problem}");
            }
            eprintln!("{}: {} problem(s)", path.display(), problems.len());
            exit(Exit::Usage)
        }
    }
}
