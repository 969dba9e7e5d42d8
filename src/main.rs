//! The `grant-broker` command: the server (`serve`), configuration checking (`check-config`) and
//! a client for a running server (`targets`, `request`, `issue`, `approve`, `deny`, `extend`,
//! `revoke`, `revoke-grantee`, `revoke-target-sessions`, `find-key`, `cancel`,
//! `get`, `list`).

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand, ValueEnum};
use grant_broker::{
    cli::{self, ClientError, CredentialFormat, Exit, client},
    config::Config,
    grpc::proto,
    server,
};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "grant-broker",
    version,
    about = "Temporary, downscoped AWS credentials for third parties and jobs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

#[derive(clap::Args)]
struct Connection {
    /// Server address.
    #[arg(
        long,
        env = "GRANT_BROKER_ADDR",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    server: String,
    /// Caller token (sent as `authorization: Bearer <token>`).
    #[arg(long, env = "GRANT_BROKER_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Print JSON instead of a summary.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(clap::Args)]
struct RequestArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(flatten)]
    fields: RequestFields,
    /// Print the credentials as `export AWS_...` lines.
    #[arg(long, conflicts_with_all = ["credential_process", "json"])]
    export: bool,
    /// Print the credentials as AWS `credential_process` JSON.
    #[arg(long, conflicts_with = "json")]
    credential_process: bool,
}

#[derive(clap::Args)]
struct ExplainArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(flatten)]
    fields: RequestFields,
}

/// What `request` and `explain` send.
#[derive(clap::Args)]
struct RequestFields {
    #[arg(long)]
    target: String,
    #[arg(long = "action", required = true)]
    actions: Vec<String>,
    #[arg(long = "resource", required = true)]
    resources: Vec<String>,
    /// Grant length: seconds, or with a unit (`900s`, `30m`, `1h`).
    #[arg(long, value_parser = parse_duration, default_value = "1h")]
    duration: i64,
    #[arg(long, default_value = "")]
    justification: String,
    #[arg(long, default_value = "")]
    ticket: String,
    #[arg(long, env = "GRANT_BROKER_REQUESTER")]
    requester: String,
    #[arg(long)]
    grantee: String,
    /// Idempotency key: retrying with the same key returns the same grant.
    #[arg(long, default_value = "")]
    request_id: String,
    #[arg(long, default_value = "")]
    mfa_serial: String,
    #[arg(long, default_value = "")]
    mfa_code: String,
    /// Scheduled access: when the window starts (RFC 3339, at most 30 days ahead).
    #[arg(long, value_parser = parse_time)]
    start: Option<prost_types::Timestamp>,
    /// An emergency: approved at once if the rules permit break-glass, reviewed afterwards
    /// (needs --justification).
    #[arg(long)]
    break_glass: bool,
}

fn parse_time(text: &str) -> Result<prost_types::Timestamp, String> {
    let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|_| format!("`{text}` is not an RFC 3339 time such as 2026-12-01T22:00:00Z"))?;
    Ok(prost_types::Timestamp {
        seconds: at.unix_timestamp(),
        nanos: i32::try_from(at.nanosecond()).unwrap_or(0),
    })
}

impl RequestFields {
    fn into_message(self) -> proto::RequestAccessRequest {
        let Self {
            target,
            actions,
            resources,
            duration,
            justification,
            ticket,
            requester,
            grantee,
            request_id,
            mfa_serial,
            mfa_code,
            start,
            break_glass,
        } = self;
        proto::RequestAccessRequest {
            request_id,
            target,
            scopes: vec![proto::Scope { actions, resources }],
            duration: Some(prost_types::Duration {
                seconds: duration,
                nanos: 0,
            }),
            justification,
            ticket,
            requester,
            grantee,
            mfa_serial,
            mfa_code,
            start_time: start,
            break_glass,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the gRPC server.
    Serve {
        #[arg(long, env = "GRANT_BROKER_CONFIG")]
        config: PathBuf,
        #[arg(long, value_enum, default_value = "json")]
        log_format: LogFormat,
    },
    /// Validate a configuration file and the rule files it names; print every problem.
    CheckConfig {
        config: PathBuf,
        /// Also decide the sample requests in this JSON file with the configuration's rules and
        /// compare with the outcomes it expects (exit 2 when one differs).
        #[arg(long)]
        explain: Option<PathBuf>,
    },
    /// What a request would get (the decision, approvals, session policy), without making it.
    Explain(Box<ExplainArgs>),
    /// List the targets this caller may request.
    Targets {
        #[command(flatten)]
        connection: Connection,
    },
    /// Request access to a target (one scope: --action and --resource may repeat).
    Request(Box<RequestArgs>),
    /// Show one grant.
    Get {
        #[command(flatten)]
        connection: Connection,
        id: String,
    },
    /// One grant and its whole audit trail, oldest first (one line per event; `--json`: the
    /// grant, then JSON Lines of its events).
    History {
        #[command(flatten)]
        connection: Connection,
        id: String,
    },
    /// List this caller's grants, newest first.
    List(Box<ListArgs>),
    /// The pending grants waiting for an approver (every caller's; the caller must relay
    /// approvals).
    Queue {
        #[command(flatten)]
        connection: Connection,
        #[arg(long, env = "GRANT_BROKER_APPROVER")]
        approver: String,
        #[arg(long, default_value_t = 0)]
        page_size: i32,
        #[arg(long, default_value = "")]
        page_token: String,
    },
    /// Fresh credentials for an approved grant (usable as an AWS credential_process).
    Issue(Box<IssueArgs>),
    /// Approve a pending grant, as the named approver (the caller must relay approvals).
    Approve {
        #[command(flatten)]
        connection: Connection,
        id: String,
        /// The person approving.
        #[arg(long, env = "GRANT_BROKER_APPROVER")]
        approver: String,
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Deny a pending grant, as the named approver.
    Deny {
        #[command(flatten)]
        connection: Connection,
        id: String,
        #[arg(long, env = "GRANT_BROKER_APPROVER")]
        approver: String,
        /// Why (required).
        #[arg(long)]
        reason: String,
    },
    /// Review a break-glass grant after the fact, as the named approver; without an id, list the
    /// break-glass grants not yet reviewed.
    Review {
        #[command(flatten)]
        connection: Connection,
        id: Option<String>,
        #[arg(long, env = "GRANT_BROKER_APPROVER")]
        reviewer: Option<String>,
        /// What the review found (required with an id).
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Follow a grant's changes as they happen (one line each), until a final state.
    Watch {
        #[command(flatten)]
        connection: Connection,
        id: String,
        /// Resume after this cursor (printed with every change).
        #[arg(long)]
        after: Option<u64>,
        /// Stop as soon as the grant is approved (exit 0); exit 3 if it ends otherwise. For
        /// pipelines that wait for a human.
        #[arg(long)]
        until_approved: bool,
    },
    /// Ask for more time on an approved grant: approved at once, waiting for approvers
    /// (`approve`/`deny` then decide it), or denied by the rules (exit 3).
    Extend {
        #[command(flatten)]
        connection: Connection,
        id: String,
        /// How much longer: 1800, 30m, 2h.
        #[arg(long, value_parser = parse_duration)]
        by: i64,
        /// Why more time is needed (required).
        #[arg(long)]
        justification: String,
        /// Idempotency key: the same key again returns the grant as it is.
        #[arg(long, default_value = "")]
        request_id: String,
    },
    /// Take a grant back (this caller's, any for an admin caller, or as an approver) and deny its
    /// live sessions in AWS.
    Revoke {
        #[command(flatten)]
        connection: Connection,
        id: String,
        /// Why (required).
        #[arg(long)]
        reason: String,
        /// The person revoking (required when relaying an approver).
        #[arg(long, env = "GRANT_BROKER_APPROVER", default_value = "")]
        revoker: String,
        /// Wait until the deny is written in AWS, up to this long (exit 5 if it is not): 30s, 2m.
        #[arg(long, value_parser = parse_duration, num_args = 0..=1, default_missing_value = "60")]
        wait: Option<i64>,
    },
    /// Incident response (admin callers): revoke every live grant of a grantee, on every target.
    RevokeGrantee {
        #[command(flatten)]
        connection: Connection,
        grantee: String,
        #[arg(long)]
        reason: String,
        #[arg(long, env = "GRANT_BROKER_APPROVER", default_value = "")]
        revoker: String,
    },
    /// Emergency (admin callers): deny every session of a target's role issued before now.
    RevokeTargetSessions {
        #[command(flatten)]
        connection: Connection,
        target: String,
        #[arg(long)]
        reason: String,
        #[arg(long, env = "GRANT_BROKER_APPROVER", default_value = "")]
        revoker: String,
    },
    /// From a CloudTrail event back to the grant: which grant and issuance an access key id
    /// belongs to (any grant for an auditor or admin caller).
    FindKey {
        #[command(flatten)]
        connection: Connection,
        access_key_id: String,
    },
    /// The audit log (auditor and admin callers).
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Withdraw a pending or approved grant.
    Cancel {
        #[command(flatten)]
        connection: Connection,
        id: String,
        /// Why (recorded in the grant's audit trail).
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Search grants, newest first: the same as `list` (its filters), for auditors' scripts.
    List(Box<ListArgs>),
    /// Audit events, oldest first (or `--newest-first`), one line each.
    Events {
        #[command(flatten)]
        connection: Connection,
        #[arg(long, value_parser = parse_time)]
        since: Option<prost_types::Timestamp>,
        #[arg(long, value_parser = parse_time)]
        until: Option<prost_types::Timestamp>,
        #[arg(long, default_value = "")]
        grant: String,
        /// A person or a calling system.
        #[arg(long, default_value = "")]
        actor: String,
        /// Event types (repeat for any of).
        #[arg(long)]
        event: Vec<String>,
        #[arg(long, default_value = "")]
        target: String,
        #[arg(long, default_value = "")]
        account: String,
        #[arg(long)]
        newest_first: bool,
        #[arg(long, default_value_t = 0)]
        page_size: i32,
        #[arg(long, default_value = "")]
        page_token: String,
    },
    /// Follow the audit log as it grows (from now, or after a cursor), one line per event.
    Tail {
        #[command(flatten)]
        connection: Connection,
        #[arg(long, default_value = "")]
        after: String,
    },
    /// Write the audit log as JSON Lines (one event per line, each with its cursor), to stdout or
    /// a file, resumable: with `--cursor-file`, a run continues after the last event the previous
    /// one wrote. `--follow` keeps writing events as they are recorded.
    Export {
        #[command(flatten)]
        connection: Connection,
        /// Events recorded at or after this (RFC 3339), when there is no cursor to continue from.
        #[arg(long, value_parser = parse_time)]
        since: Option<prost_types::Timestamp>,
        /// Appends here instead of writing to stdout.
        #[arg(long)]
        output: Option<std::path::PathBuf>,
        /// Where the last exported cursor is kept (read at start, rewritten as the export goes).
        #[arg(long)]
        cursor_file: Option<std::path::PathBuf>,
        #[arg(long)]
        follow: bool,
    },
}

/// `list`: this caller's grants, or (auditor and admin callers) any caller's, filtered.
#[derive(clap::Args)]
struct ListArgs {
    #[command(flatten)]
    connection: Connection,
    #[arg(long, default_value_t = 0)]
    page_size: i32,
    #[arg(long, default_value = "")]
    page_token: String,
    #[arg(long, default_value = "")]
    requester: String,
    #[arg(long, default_value = "")]
    grantee: String,
    /// Another caller's grants (auditor and admin callers).
    #[arg(long, default_value = "")]
    caller: String,
    #[arg(long, default_value = "")]
    target: String,
    #[arg(long, default_value = "")]
    account: String,
    /// pending_approval, approved, denied, expired, cancelled or revoked (repeat for any of).
    #[arg(long, value_parser = parse_state)]
    state: Vec<proto::GrantState>,
    /// Only grants live now: approved, window open.
    #[arg(long)]
    live: bool,
    /// Only break-glass grants (`--break-glass true`) or only others (`false`).
    #[arg(long)]
    break_glass: Option<bool>,
    /// Created at or after (RFC 3339).
    #[arg(long, value_parser = parse_time)]
    since: Option<prost_types::Timestamp>,
    /// Created before (RFC 3339).
    #[arg(long, value_parser = parse_time)]
    until: Option<prost_types::Timestamp>,
}

fn parse_state(text: &str) -> Result<proto::GrantState, String> {
    proto::GrantState::from_str_name(&format!("GRANT_STATE_{}", text.to_ascii_uppercase()))
        .filter(|state| *state != proto::GrantState::Unspecified)
        .ok_or_else(|| {
            format!("`{text}` is not a state: pending_approval, approved, denied, expired, cancelled or revoked")
        })
}

#[derive(clap::Args)]
struct IssueArgs {
    #[command(flatten)]
    connection: Connection,
    /// The grant's id.
    id: String,
    #[arg(long, default_value = "")]
    mfa_serial: String,
    #[arg(long, default_value = "")]
    mfa_code: String,
    /// Print the credentials as `export AWS_...` lines.
    #[arg(long, conflicts_with_all = ["credential_process", "json"])]
    export: bool,
    /// Print the credentials as AWS `credential_process` JSON.
    #[arg(long, conflicts_with = "json")]
    credential_process: bool,
}

fn parse_duration(text: &str) -> Result<i64, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, "s"), |at| text.split_at(at));
    let number: i64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 900, 30m or 1h"))?;
    let factor = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("unknown unit `{unit}`: use s, m or h")),
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("`{text}` is too long"))
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn shutdown_signal() {
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

async fn serve(config: PathBuf, log_format: LogFormat) -> ExitCode {
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
    let listener = match TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%listen, %error, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    let result = async {
        let (broker, auth, deliveries) = server::build(config).await?;
        tracing::info!(address = %listen, "grant-broker serving");
        server::run(listener, broker, auth, deliveries, shutdown_signal(), drain_timeout).await
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

fn check_config(path: PathBuf, explain: Option<PathBuf>) -> ExitCode {
    match Config::load(&path) {
        Ok(config) => {
            if let Some(cases) = explain {
                let report = std::fs::read_to_string(&cases)
                    .map_err(|error| format!("cannot read {}: {error}", cases.display()))
                    .and_then(|text| cli::cases::run(&config, &text));
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
                "{}: ok ({} targets, {} callers, {} rules, {} webhooks, {} warning(s))",
                path.display(),
                config.targets.len(),
                config.callers.len(),
                config.rules.policy_count(),
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

async fn run_client(command: Command) -> Result<String, ClientError> {
    let connect = |connection: &Connection| {
        let address = connection.server.clone();
        let token = connection.token.clone();
        async move {
            let token = token
                .ok_or_else(|| ClientError::new(Exit::Usage, "no token: pass --token or set GRANT_BROKER_TOKEN"))?;
            client::connect(&address, &token).await
        }
    };
    match command {
        Command::Targets { connection } => client::targets(&mut connect(&connection).await?, connection.json).await,
        Command::Get { connection, id } => client::get(&mut connect(&connection).await?, id, connection.json).await,
        Command::History { connection, id } => {
            client::history(&mut connect(&connection).await?, id, connection.json).await
        }
        Command::List(arguments) | Command::Audit(AuditCommand::List(arguments)) => {
            let ListArgs {
                connection,
                page_size,
                page_token,
                requester,
                grantee,
                caller,
                target,
                account,
                state,
                live,
                break_glass,
                since,
                until,
            } = *arguments;
            let message = proto::ListGrantsRequest {
                page_size,
                page_token,
                requester,
                grantee,
                caller,
                target,
                account_id: account,
                states: state.into_iter().map(i32::from).collect(),
                live,
                break_glass,
                create_time_from: since,
                create_time_to: until,
                ..proto::ListGrantsRequest::default()
            };
            client::list(&mut connect(&connection).await?, message, connection.json).await
        }
        Command::Queue {
            connection,
            approver,
            page_size,
            page_token,
        } => {
            let message = proto::ListGrantsRequest {
                page_size,
                page_token,
                waiting_for_approver: approver,
                ..proto::ListGrantsRequest::default()
            };
            client::list(&mut connect(&connection).await?, message, connection.json).await
        }
        Command::Issue(arguments) => {
            let IssueArgs {
                connection,
                id,
                mfa_serial,
                mfa_code,
                export,
                credential_process,
            } = *arguments;
            let format = CredentialFormat::chosen(connection.json, export, credential_process);
            let message = proto::IssueCredentialsRequest {
                id,
                mfa_serial,
                mfa_code,
            };
            client::issue(&mut connect(&connection).await?, message, format).await
        }
        Command::Approve {
            connection,
            id,
            approver,
            comment,
        } => {
            let message = proto::ApproveGrantRequest { id, approver, comment };
            client::approve(&mut connect(&connection).await?, message, connection.json).await
        }
        Command::Deny {
            connection,
            id,
            approver,
            reason,
        } => {
            let message = proto::DenyGrantRequest { id, approver, reason };
            client::deny(&mut connect(&connection).await?, message, connection.json).await
        }
        Command::Review {
            connection, id: None, ..
        } => {
            let message = proto::ListGrantsRequest {
                break_glass_unreviewed: true,
                ..proto::ListGrantsRequest::default()
            };
            client::list(&mut connect(&connection).await?, message, connection.json).await
        }
        Command::Review {
            connection,
            id: Some(id),
            reviewer,
            comment,
        } => {
            let reviewer = reviewer
                .ok_or_else(|| ClientError::new(Exit::Usage, "--reviewer (or GRANT_BROKER_APPROVER) is required"))?;
            let message = proto::ReviewGrantRequest { id, reviewer, comment };
            client::review(&mut connect(&connection).await?, message, connection.json).await
        }
        Command::Watch {
            connection,
            id,
            after,
            until_approved,
        } => {
            let message = proto::WatchGrantRequest { id, after_event: after };
            client::watch(
                &mut connect(&connection).await?,
                message,
                until_approved,
                connection.json,
            )
            .await
        }
        Command::Extend {
            connection,
            id,
            by,
            justification,
            request_id,
        } => {
            let message = proto::ExtendGrantRequest {
                id,
                additional_duration: Some(prost_types::Duration { seconds: by, nanos: 0 }),
                justification,
                request_id,
            };
            client::extend(&mut connect(&connection).await?, message, connection.json).await
        }
        Command::Revoke {
            connection,
            id,
            reason,
            revoker,
            wait,
        } => {
            let message = proto::RevokeGrantRequest { id, reason, revoker };
            let wait = wait.map(|seconds| std::time::Duration::from_secs(u64::try_from(seconds).unwrap_or(0)));
            client::revoke(&mut connect(&connection).await?, message, wait, connection.json).await
        }
        Command::RevokeGrantee {
            connection,
            grantee,
            reason,
            revoker,
        } => {
            let message = proto::RevokeGranteeRequest {
                grantee,
                reason,
                revoker,
            };
            client::revoke_grantee(&mut connect(&connection).await?, message, connection.json).await
        }
        Command::RevokeTargetSessions {
            connection,
            target,
            reason,
            revoker,
        } => {
            let message = proto::RevokeTargetSessionsRequest {
                target,
                reason,
                revoker,
            };
            client::revoke_target_sessions(&mut connect(&connection).await?, message, connection.json).await
        }
        Command::Audit(AuditCommand::Events {
            connection,
            since,
            until,
            grant,
            actor,
            event,
            target,
            account,
            newest_first,
            page_size,
            page_token,
        }) => {
            let message = proto::ListAuditEventsRequest {
                from_time: since,
                to_time: until,
                grant_id: grant,
                actor,
                events: event,
                target,
                account_id: account,
                newest_first,
                page_size,
                page_token,
            };
            client::audit_events(&mut connect(&connection).await?, message, connection.json).await
        }
        Command::Audit(AuditCommand::Export {
            connection,
            since,
            output,
            cursor_file,
            follow,
        }) => {
            let export = client::Export {
                since,
                output,
                cursor_file,
                follow,
            };
            client::audit_export(&mut connect(&connection).await?, export).await
        }
        Command::Audit(AuditCommand::Tail { connection, after }) => {
            let message = proto::WatchAuditEventsRequest { after_cursor: after };
            client::audit_tail(&mut connect(&connection).await?, message, connection.json).await
        }
        Command::FindKey {
            connection,
            access_key_id,
        } => {
            let message = proto::FindGrantByAccessKeyRequest { access_key_id };
            client::find_key(&mut connect(&connection).await?, message, connection.json).await
        }
        Command::Cancel { connection, id, reason } => {
            client::cancel(&mut connect(&connection).await?, id, reason, connection.json).await
        }
        Command::Request(arguments) => {
            let RequestArgs {
                connection,
                fields,
                export,
                credential_process,
            } = *arguments;
            let format = CredentialFormat::chosen(connection.json, export, credential_process);
            client::request(&mut connect(&connection).await?, fields.into_message(), format).await
        }
        Command::Explain(arguments) => {
            let ExplainArgs { connection, fields } = *arguments;
            client::explain(&mut connect(&connection).await?, fields.into_message(), connection.json).await
        }
        Command::Serve { .. } | Command::CheckConfig { .. } => {
            Err(ClientError::new(Exit::Usage, "not a client command"))
        }
    }
}

fn exit(how: Exit) -> ExitCode {
    ExitCode::from(how.code())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, log_format } => serve(config, log_format).await,
        Command::CheckConfig { config, explain } => check_config(config, explain),
        command => match run_client(command).await {
            Ok(output) => {
                print!("{output}");
                if !output.is_empty() && !output.ends_with('\n') {
                    println!();
                }
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("{}", error.message);
                exit(error.exit)
            }
        },
    }
}
