//! The `pigeon` command: one binary for the relay, the benchmarks and the demo.

mod acme;
mod app_cmd;
mod backup_cmd;
mod bench;
mod bench_app;
mod bench_attack;
mod bench_backup;
mod bench_client;
mod bench_cluster;
mod bench_file;
mod bench_group;
mod bench_link;
mod bench_nats;
mod bench_proxy;
mod bench_tls;
mod chat_cmd;
mod connect_cmd;
mod demo;
mod devices_cmd;
mod files_cmd;
mod group_cmd;
mod progress;
mod proxy_cmd;
mod qr;
mod relay_cmd;
mod relay_proc;
mod relays_cmd;
mod rpc_cmd;
mod shell_cmd;
mod tls_setup;
mod transfers;
mod user_cmd;

use clap::{Parser, Subcommand};

/// jemalloc rather than glibc's malloc: with tens of thousands of idle connections, glibc's
/// per-thread arenas and the 128-byte-aligned task allocations leave about a quarter of the
/// relay's heap in holes (2,170 B per idle `tls` connection against 1,648 B under jemalloc, by
/// `pigeon bench tls --idle-connections 18000`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Pigeonpost: private messaging that keeps working when networks are censored.
#[derive(Parser, Debug)]
#[command(name = "pigeon", version, about, long_about = None)]
struct Cli {
    /// Log as JSON lines instead of text (logs never contain keys, ids or message content).
    #[arg(long, global = true)]
    log_json: bool,
    /// The profile directory [default: $XDG_DATA_HOME/pigeonpost or ~/.local/share/pigeonpost];
    /// before or after the subcommand.
    #[arg(long, env = "PIGEON_PROFILE", value_name = "DIR", global = true)]
    profile: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create your profile (an encrypted database) and choose the relay you receive on.
    Init(user_cmd::InitArgs),
    /// Make a one-time invitation link (and QR code) to share with one person.
    Invite(user_cmd::InviteArgs),
    /// Accept an invitation link: start an end-to-end encrypted conversation.
    Accept(user_cmd::AcceptArgs),
    /// List your contacts.
    Contacts(user_cmd::ContactsArgs),
    /// Send a message.
    Send(user_cmd::SendArgs),
    /// Fetch and print new messages (and mark them read); files that arrived are fetched too.
    Read(user_cmd::ReadArgs),
    /// List the photos, voice notes and files of your conversations.
    Files(files_cmd::FilesArgs),
    /// Save a file that arrived (or one you sent) out of the encrypted profile.
    Save(files_cmd::SaveArgs),
    /// Whether your contacts see that you read their messages: on (the default) or off.
    ReadReceipts(files_cmd::ReadReceiptsArgs),
    /// Talk interactively with one contact.
    Chat(chat_cmd::ChatArgs),
    /// Groups: create, invite, add, remove, leave, members, admin, rename.
    #[command(subcommand)]
    Group(group_cmd::GroupCommand),
    /// Show the safety number with a contact or a group member (and mark them verified).
    Verify(group_cmd::VerifyArgs),
    /// Your devices: list them (the default), link a new one, remove one.
    Devices(devices_cmd::DevicesArgs),
    /// Write an encrypted backup of your profile (contacts, groups, settings, history).
    Backup(backup_cmd::BackupArgs),
    /// Make a profile on this machine from a backup: it rejoins every conversation as a new
    /// device (new keys; the backup's device is replaced).
    Restore(backup_cmd::RestoreArgs),
    /// Connect to your relays and show the route search as it happens (every other command
    /// searches the same way, silently).
    Connect(connect_cmd::ConnectArgs),
    /// Run a relay: anonymous mailboxes on an embedded store.
    Relay(Box<relay_cmd::RelayArgs>),
    /// Run a volunteer proxy or domestic hop: clients reach relays through it, end to end
    /// encrypted, over the tls transport both ways.
    Proxy(Box<proxy_cmd::ProxyArgs>),
    /// The proxies your profile reaches relays through: add, list, remove.
    #[command(subcommand)]
    Proxies(proxy_cmd::ProxiesCommand),
    /// The relays your profile makes invitations, conversations and groups on: add, list,
    /// remove.
    #[command(subcommand)]
    Relays(relays_cmd::RelaysCommand),
    /// Run a benchmark and print its figures.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Censorship lab: a censoring middlebox, an active prober and a scenario runner.
    #[command(subcommand)]
    Lab(pigeon_lab::cli::LabCommand),
    /// Start a relay in a temporary directory and run a scripted exchange through it.
    Demo(demo::DemoArgs),
    /// Serve the web client on this machine (loopback only) and print its one-time address.
    App(app_cmd::AppArgs),
    /// Speak JSON-RPC 2.0 on standard input and output, one object per line (docs/RPC.md):
    /// the core that front ends drive.
    Rpc(rpc_cmd::RpcArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(shell_cmd::CompletionsArgs),
    /// Print the manual page (or write one per command with --dir).
    Man(shell_cmd::ManArgs),
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PIGEON_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "info,fjall=warn,lsm_tree=warn,async_nats=warn,refinery_core=warn",
        )
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour_on_stderr())
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Colour only on a terminal, and never with `NO_COLOR` set (to anything but empty; see
/// no-color.org).
fn colour_on_stderr() -> bool {
    use std::io::IsTerminal as _;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// The global `--profile` as given (it is a path for user commands).
fn cli_profile_text(matches: &clap::ArgMatches) -> Option<String> {
    matches
        .get_one::<std::path::PathBuf>("profile")
        .map(|p| p.to_string_lossy().into_owned())
}

fn main() -> std::process::ExitCode {
    quiet_when_the_reader_leaves();
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    // For lab commands `--profile` names the censor profile; a PIGEON_PROFILE in the
    // environment is a user profile and does not count.
    let profile_flag = (matches.value_source("profile")
        == Some(clap::parser::ValueSource::CommandLine))
    .then(|| cli_profile_text(&matches))
    .flatten();
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    init_logging(cli.log_json);
    user_cmd::set_profile_dir(cli.profile.clone());
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
            Command::Relay(args) => relay_cmd::run(*args).await.map(|()| 0),
            Command::Proxy(args) => proxy_cmd::run(*args).await.map(|()| 0),
            Command::Proxies(cmd) => proxy_cmd::proxies(cmd).map(|()| 0),
            Command::Relays(cmd) => relays_cmd::run(cmd).map(|()| 0),
            Command::Bench(cmd) => bench::run(cmd).await.map(|()| 0),
            Command::Demo(args) => demo::run(args).await.map(|()| 0),
            Command::Rpc(args) => rpc_cmd::run(args).await,
            Command::App(args) => app_cmd::run(args).await,
            Command::Completions(args) => {
                shell_cmd::completions(&args, <Cli as clap::CommandFactory>::command()).map(|()| 0)
            }
            Command::Man(args) => {
                shell_cmd::man(&args, <Cli as clap::CommandFactory>::command()).map(|()| 0)
            }
            Command::Lab(cmd) => pigeon_lab::cli::run(cmd, profile_flag).await.map(|()| 0),
            Command::Init(args) => user_cmd::init(args).await,
            Command::Devices(cmd) => devices_cmd::run(cmd).await,
            Command::Backup(args) => backup_cmd::backup(args).await,
            Command::Restore(args) => backup_cmd::restore(args).await,
            Command::Connect(args) => connect_cmd::run(args).await,
            Command::Invite(args) => user_cmd::invite(args).await.map(|()| 0),
            Command::Accept(args) => user_cmd::accept(args).await,
            Command::Contacts(args) => user_cmd::contacts(args).map(|()| 0),
            Command::Send(args) => user_cmd::send(args).await,
            Command::Read(args) => user_cmd::read(args).await,
            Command::Files(args) => files_cmd::files(&args),
            Command::Save(args) => files_cmd::save(&args),
            Command::ReadReceipts(args) => files_cmd::read_receipts(&args),
            Command::Chat(args) => chat_cmd::run(args).await,
            Command::Group(cmd) => group_cmd::run(cmd).await,
            Command::Verify(args) => group_cmd::verify(args),
        }
    });
    match result {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {}", chain_once(&e));
            if let Some(kind) = kind_of(&e) {
                eprintln!("  (where it went wrong: {})", plain(kind));
            }
            std::process::ExitCode::FAILURE
        }
    }
}

/// Who is at fault, for the errors that know.
pub(crate) fn kind_of(e: &anyhow::Error) -> Option<pigeon_wire::ErrorKind> {
    e.chain().find_map(|cause| {
        if let Some(c) = cause.downcast_ref::<pigeon_client::Error>() {
            Some(c.kind())
        } else if let Some(p) = cause.downcast_ref::<pigeon_client::ProfileError>() {
            Some(p.kind())
        } else if let Some(r) = cause.downcast_ref::<pigeon_client::ClientError>() {
            Some(r.kind())
        } else {
            cause
                .downcast_ref::<pigeon_client::InviteError>()
                .map(pigeon_client::InviteError::kind)
        }
    })
}

/// An [`ErrorKind`](pigeon_wire::ErrorKind) in words for people.
fn plain(kind: pigeon_wire::ErrorKind) -> &'static str {
    use pigeon_wire::ErrorKind;
    match kind {
        ErrorKind::LocalNetwork => "the network: possibly censorship, or no connection",
        ErrorKind::Relay => "the relay",
        ErrorKind::Peer => "the other side",
        ErrorKind::BadInput => "what was given",
        ErrorKind::Refused => "refused",
        ErrorKind::Internal => "a bug in pigeon",
        _ => "unknown",
    }
}

/// The error and its causes, each sentence once: many errors here already say their cause in
/// their own sentence, which `{:#}` would repeat.
pub(crate) fn chain_once(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// A reader that went away (`pigeon invite | head -1`) ends the program quietly with the status
/// of a broken pipe, as it ends any Unix tool, instead of a panic report: Rust ignores SIGPIPE,
/// so printing to a closed pipe panics inside `println!`.
fn quiet_when_the_reader_leaves() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to std") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}
