//! The command line: every command, its arguments and how they parse (clap).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::grpc::proto;

#[derive(Parser)]
#[command(
    name = "grant-broker",
    version,
    about = "Temporary, downscoped AWS credentials for third parties and jobs"
)]
pub struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum LogFormat {
    /// One JSON object a line (what log pipelines read).
    Json,
    /// Readable lines.
    Text,
    /// Text on a terminal, JSON otherwise.
    Auto,
}

impl From<LogFormat> for crate::telemetry::LogFormat {
    fn from(format: LogFormat) -> Self {
        match format {
            LogFormat::Json => Self::Json,
            LogFormat::Text => Self::Text,
            LogFormat::Auto => Self::Auto,
        }
    }
}

#[derive(clap::Args)]
pub(crate) struct Connection {
    /// Server address.
    #[arg(
        long,
        env = "GRANT_BROKER_ADDR",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub(crate) server: String,
    /// Caller token (sent as `authorization: Bearer <token>`); not needed with a client
    /// certificate (`--cert`).
    #[arg(long, env = "GRANT_BROKER_TOKEN", hide_env_values = true, global = true)]
    pub(crate) token: Option<String>,
    /// A person's or a job's OIDC token (sent as `x-identity-token`): the person a portal acts
    /// for, or the pipeline itself (a caller with `identity_required` needs nothing else).
    #[arg(
        long,
        env = "GRANT_BROKER_IDENTITY_TOKEN",
        hide_env_values = true,
        global = true,
        conflicts_with = "identity_token_file"
    )]
    pub(crate) identity_token: Option<String>,
    /// A file holding the identity token, read at each call (a Kubernetes projected
    /// service-account token, a CI job's token file).
    #[arg(long, env = "GRANT_BROKER_IDENTITY_TOKEN_FILE", global = true)]
    pub(crate) identity_token_file: Option<std::path::PathBuf>,
    /// The CA bundle (PEM) the server's certificate is checked against, for an `https://`
    /// server.
    #[arg(long, env = "GRANT_BROKER_CA", global = true)]
    pub(crate) ca: Option<std::path::PathBuf>,
    /// This caller's client certificate (PEM), for mTLS; goes with `--key`.
    #[arg(long, env = "GRANT_BROKER_CERT", global = true, requires = "key")]
    pub(crate) cert: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "GRANT_BROKER_KEY", global = true, requires = "cert")]
    pub(crate) key: Option<std::path::PathBuf>,
    /// Print JSON instead of a summary.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

#[derive(clap::Args)]
pub(crate) struct RequestArgs {
    #[command(flatten)]
    pub(crate) connection: Connection,
    #[command(flatten)]
    pub(crate) fields: RequestFields,
    /// Print the credentials as `export AWS_...` lines.
    #[arg(long, conflicts_with_all = ["credential_process", "json"])]
    pub(crate) export: bool,
    /// Print the credentials as AWS `credential_process` JSON.
    #[arg(long, conflicts_with = "json")]
    pub(crate) credential_process: bool,
}

#[derive(clap::Args)]
pub(crate) struct ExplainArgs {
    #[command(flatten)]
    pub(crate) connection: Connection,
    #[command(flatten)]
    pub(crate) fields: RequestFields,
}

/// What `request` and `explain` send.
#[derive(clap::Args)]
pub(crate) struct RequestFields {
    #[arg(long)]
    pub(crate) target: String,
    #[arg(long = "action", required = true)]
    pub(crate) actions: Vec<String>,
    #[arg(long = "resource", required = true)]
    pub(crate) resources: Vec<String>,
    /// Grant length: seconds, or with a unit (`900s`, `30m`, `1h`).
    #[arg(long, value_parser = parse_duration, default_value = "1h")]
    pub(crate) duration: i64,
    #[arg(long, default_value = "")]
    pub(crate) justification: String,
    #[arg(long, default_value = "")]
    pub(crate) ticket: String,
    /// Who asks; may be left out when an identity token names them.
    #[arg(long, env = "GRANT_BROKER_REQUESTER", default_value = "")]
    pub(crate) requester: String,
    #[arg(long)]
    pub(crate) grantee: String,
    /// Idempotency key: retrying with the same key returns the same grant.
    #[arg(long, default_value = "")]
    pub(crate) request_id: String,
    #[arg(long, default_value = "")]
    pub(crate) mfa_serial: String,
    #[arg(long, default_value = "")]
    pub(crate) mfa_code: String,
    /// Scheduled access: when the window starts (RFC 3339, at most 30 days ahead).
    #[arg(long, value_parser = parse_time)]
    pub(crate) start: Option<prost_types::Timestamp>,
    /// An emergency: approved at once if the rules permit break-glass, reviewed afterwards
    /// (needs --justification).
    #[arg(long)]
    pub(crate) break_glass: bool,
}

pub(crate) fn parse_time(text: &str) -> Result<prost_types::Timestamp, String> {
    let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|_| format!("`{text}` is not an RFC 3339 time such as 2026-12-01T22:00:00Z"))?;
    Ok(prost_types::Timestamp {
        seconds: at.unix_timestamp(),
        nanos: i32::try_from(at.nanosecond()).unwrap_or(0),
    })
}

impl RequestFields {
    pub(crate) fn into_message(self) -> proto::RequestAccessRequest {
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
pub(crate) enum Command {
    /// Run the gRPC server.
    Serve {
        #[arg(long, env = "GRANT_BROKER_CONFIG")]
        config: PathBuf,
        #[arg(long, value_enum, default_value = "auto")]
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
        /// The person approving; may be left out when their identity token names them.
        #[arg(long, env = "GRANT_BROKER_APPROVER", default_value = "")]
        approver: String,
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Deny a pending grant, as the named approver.
    Deny {
        #[command(flatten)]
        connection: Connection,
        id: String,
        /// The person denying; may be left out when their identity token names them.
        #[arg(long, env = "GRANT_BROKER_APPROVER", default_value = "")]
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
pub(crate) enum AuditCommand {
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
    /// Check that the audit log is complete and unaltered: every entry's seal, the checkpoints,
    /// each writer's sequence, and every grant record the log refers to; or, with
    /// `--from-export`, an exported archive without Redis. Prints what was tampered with or is
    /// missing; exits 6 when anything was. Reads the broker's configuration (its Redis and its
    /// integrity keys); talks to no server.
    Verify {
        #[arg(long, env = "GRANT_BROKER_CONFIG")]
        config: std::path::PathBuf,
        /// Entries recorded at or after this (RFC 3339); default: the whole log.
        #[arg(long, value_parser = parse_time)]
        since: Option<prost_types::Timestamp>,
        /// An archive written by `audit export` to check instead of the log.
        #[arg(long)]
        from_export: Option<std::path::PathBuf>,
    },
}

/// `list`: this caller's grants, or (auditor and admin callers) any caller's, filtered.
#[derive(clap::Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    pub(crate) connection: Connection,
    #[arg(long, default_value_t = 0)]
    pub(crate) page_size: i32,
    #[arg(long, default_value = "")]
    pub(crate) page_token: String,
    #[arg(long, default_value = "")]
    pub(crate) requester: String,
    #[arg(long, default_value = "")]
    pub(crate) grantee: String,
    /// Another caller's grants (auditor and admin callers).
    #[arg(long, default_value = "")]
    pub(crate) caller: String,
    #[arg(long, default_value = "")]
    pub(crate) target: String,
    #[arg(long, default_value = "")]
    pub(crate) account: String,
    /// pending_approval, approved, denied, expired, cancelled or revoked (repeat for any of).
    #[arg(long, value_parser = parse_state)]
    pub(crate) state: Vec<proto::GrantState>,
    /// Only grants live now: approved, window open.
    #[arg(long)]
    pub(crate) live: bool,
    /// Only break-glass grants (`--break-glass true`) or only others (`false`).
    #[arg(long)]
    pub(crate) break_glass: Option<bool>,
    /// Created at or after (RFC 3339).
    #[arg(long, value_parser = parse_time)]
    pub(crate) since: Option<prost_types::Timestamp>,
    /// Created before (RFC 3339).
    #[arg(long, value_parser = parse_time)]
    pub(crate) until: Option<prost_types::Timestamp>,
}

pub(crate) fn parse_state(text: &str) -> Result<proto::GrantState, String> {
    proto::GrantState::from_str_name(&format!("GRANT_STATE_{}", text.to_ascii_uppercase()))
        .filter(|state| *state != proto::GrantState::Unspecified)
        .ok_or_else(|| {
            format!("`{text}` is not a state: pending_approval, approved, denied, expired, cancelled or revoked")
        })
}

#[derive(clap::Args)]
pub(crate) struct IssueArgs {
    #[command(flatten)]
    pub(crate) connection: Connection,
    /// The grant's id.
    pub(crate) id: String,
    #[arg(long, default_value = "")]
    pub(crate) mfa_serial: String,
    #[arg(long, default_value = "")]
    pub(crate) mfa_code: String,
    /// Print the credentials as `export AWS_...` lines.
    #[arg(long, conflicts_with_all = ["credential_process", "json"])]
    pub(crate) export: bool,
    /// Print the credentials as AWS `credential_process` JSON.
    #[arg(long, conflicts_with = "json")]
    pub(crate) credential_process: bool,
}

pub(crate) fn parse_duration(text: &str) -> Result<i64, String> {
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
