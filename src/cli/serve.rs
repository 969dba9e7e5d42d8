//! The server side of the command: `serve` (logging, signals, the server until SIGTERM) and
//! `check-config`.

use std::{path::PathBuf, process::ExitCode};

use tokio::net::TcpListener;

use super::{Exit, args::LogFormat, exit};
use crate::{config::Config, server, telemetry};

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

pub(crate) async fn serve(path: PathBuf, log_format: LogFormat) -> ExitCode {
    // SIGHUP's default is to end the process: taken over at once, before anything listens, so a
    // reload asked for while the broker starts cannot kill it (the reloader listens from when the
    // server runs; a change made before is found by its look at the files).
    #[cfg(unix)]
    let _hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    let telemetry = match telemetry::init(log_format.into()) {
        Ok(telemetry) => telemetry,
        Err(problem) => {
            eprintln!("telemetry: {problem}");
            return exit(Exit::Usage);
        }
    };
    let code = serve_until_stopped(path).await;
    // Blocks until the exporters have sent what they hold (each bounded by its timeout); they
    // run on threads of their own and need this runtime's workers for their connections.
    if tokio::task::spawn_blocking(move || telemetry.shutdown()).await.is_err() {
        tracing::warn!("telemetry did not shut down cleanly");
    }
    code
}

async fn serve_until_stopped(path: PathBuf) -> ExitCode {
    let looked = server::reload::Source::looked_at(&path);
    let (text, config) = match Config::read(&path) {
        Ok(read) => read,
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
    let serving = |config: &Config| server::Serving {
        drain_timeout: config.drain_timeout,
        tls: tls.as_ref(),
        calls: config.calls.clone(),
        reload: Some(server::reload::Source {
            path: path.clone(),
            text,
            rule_files: config.rule_files.clone(),
            check_every: config.reload_check,
            seen: server::reload::Source::and_rule_files(looked, &config.rule_files),
        }),
    };
    let serving = serving(&config);
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
            serving,
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
