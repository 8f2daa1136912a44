//! The `pigeon` command: one binary for the relay, the benchmarks and the demo.

mod bench;
mod bench_nats;
mod demo;
mod qr;
mod relay_cmd;
mod relay_proc;

use clap::{Parser, Subcommand};

/// Pigeonpost: private messaging that keeps working when networks are censored.
#[derive(Parser, Debug)]
#[command(name = "pigeon", version, about, long_about = None)]
struct Cli {
    /// Log as JSON lines instead of text (logs never contain keys, ids or message content).
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a relay: anonymous mailboxes on an embedded store.
    Relay(relay_cmd::RelayArgs),
    /// Run a benchmark and print its figures.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Start a relay in a temporary directory and run a scripted exchange through it.
    Demo(demo::DemoArgs),
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PIGEON_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,fjall=warn,lsm_tree=warn,async_nats=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_json);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Relay(args) => relay_cmd::run(args).await,
            Command::Bench(cmd) => bench::run(cmd).await,
            Command::Demo(args) => demo::run(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
