//! The `grant-broker` command: its arguments ([`args`]), the server side (`serve` and
//! `check-config`, [`serve`]), the client calls against a running server and how their results
//! are printed ([`dispatch`], [`client`]), and the one list of exit codes. The client is a client
//! of the gRPC API, so it names protobuf types; the server's own transport is `grpc/`.

mod args;
pub mod cases;
pub mod client;
mod dispatch;
mod json;
mod serve;
mod verify;

use std::fmt::Write as _;

use tonic::Status;
use tonic_types::StatusExt;

pub use args::Cli;
pub use client::CredentialFormat;

/// Runs the command line: the server, a configuration check, or one client call, and says how
/// the process ends.
pub async fn run(cli: Cli) -> std::process::ExitCode {
    use args::Command;
    match cli.command {
        Command::Serve { config, log_format } => serve::serve(config, log_format).await,
        Command::CheckConfig { config, explain } => serve::check_config(config, explain),
        Command::Audit(args::AuditCommand::Verify {
            config,
            since,
            from_export,
        }) => verify::run(&config, since, from_export.as_deref()).await,
        command => match dispatch::run_client(command).await {
            Ok(output) => {
                print!("{output}");
                if !output.is_empty() && !output.ends_with('\n') {
                    println!();
                }
                std::process::ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("{}", error.message);
                exit(error.exit)
            }
        },
    }
}

fn exit(how: Exit) -> std::process::ExitCode {
    std::process::ExitCode::from(how.code())
}

/// Every way the command can end, and the process exit code each gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Success,
    /// The server refused, or could not be reached: the status code and message go to stderr.
    Refused,
    /// The command line itself was wrong (or the configuration, for `check-config`).
    Usage,
    /// The rules denied the grant.
    Denied,
    /// Credentials were asked for in a machine format, but none were issued (pending approval).
    NotIssued,
    /// A revocation is recorded, but `--wait` ran out before its deny was written in AWS.
    NotEnforced,
    /// `audit verify` found something tampered with or missing.
    Tampered,
}

impl Exit {
    pub fn code(self) -> u8 {
        match self {
            Self::Success => 0,
            Self::Refused => 1,
            Self::Usage => 2,
            Self::Denied => 3,
            Self::NotIssued => 4,
            Self::NotEnforced => 5,
            Self::Tampered => 6,
        }
    }
}

/// What went wrong on the client side, and how the command ends.
#[derive(Debug)]
pub struct ClientError {
    pub exit: Exit,
    pub message: String,
}

impl ClientError {
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self {
            exit,
            message: message.into(),
        }
    }
}

impl From<Status> for ClientError {
    /// The status code, message and any field violations, one per line.
    fn from(status: Status) -> Self {
        let mut message = format!("{:?}: {}", status.code(), status.message());
        if let Some(bad_request) = status.get_error_details().bad_request() {
            for violation in &bad_request.field_violations {
                let _ = write!(message, "\n  {}: {}", violation.field, violation.description);
            }
        }
        Self::new(Exit::Refused, message)
    }
}
