//! The `grant-broker` command: the server (`serve`), configuration checking (`check-config`) and
//! a client for a running server. Everything is in [`grant_broker::cli`].

use std::process::ExitCode;

use clap::Parser as _;
use grant_broker::cli::{Cli, run};

#[tokio::main]
async fn main() -> ExitCode {
    run(Cli::parse()).await
}
