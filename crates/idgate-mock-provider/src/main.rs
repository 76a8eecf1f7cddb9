//! `idgate-mock-provider`: a local identity-verification provider for idgate's demo and tests
//! (also available as `idgate mock-provider`).

use std::process::ExitCode;

use clap::Parser;
use idgate_mock_provider::{MockArgs, run_from_args};

#[derive(Parser)]
#[command(
    name = "idgate-mock-provider",
    version,
    about = "A local IDV provider speaking the Didit v3 API, for idgate's demo and tests",
    long_about = "A local identity-verification provider that speaks the Didit v3 API from \
memory (sessions, decisions with specimen personal data, listing, status updates, deletion, \
workflows), checks credentials as Didit, Sumsub or Veriff do, and sends Didit status webhooks \
signed with X-Signature, X-Signature-V2 and X-Signature-Simple. Secrets are read from \
environment variables or files, never from the command line."
)]
struct Cli {
    #[command(flatten)]
    args: MockArgs,
}

fn main() -> ExitCode {
    run_from_args(Cli::parse().args)
}
