//! The `pigeon lab` command without the `pigeon` binary, for trying the lab before it is wired
//! in: `cargo run -p pigeon-lab --example lab -- run --profile open --pigeon target/debug/pigeon`.

use clap::Parser;

/// Censorship lab.
#[derive(Debug, Parser)]
struct Args {
    #[command(subcommand)]
    cmd: pigeon_lab::cli::LabCommand,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match pigeon_lab::cli::run(args.cmd, None).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
