//! `pigeon lab …`: the command surface. The `pigeon` binary wires [`LabCommand`] in as a
//! subcommand and calls [`run`].

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::probe;
use crate::profile::{BUILTIN, Profile};
use crate::runner::{self, Scenario, ScenarioResult, TRANSPORTS, VIAS, Via};

/// The lab's subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum LabCommand {
    /// Run one scenario: relay and clients talk through the censor; print whether it got through.
    Run(RunArgs),
    /// Run every profile against every transport and write the table to LAB.md.
    Matrix(MatrixArgs),
    /// Actively probe TARGET like a censor would, beside a reference server.
    Probe(ProbeArgs),
    /// Start a lab and keep it up until Ctrl-C (run your own programs in its namespaces).
    Up(UpArgs),
    /// List the built-in profiles, or print one as TOML to copy and edit.
    Profiles(ProfilesArgs),
}

/// Options shared by scenario commands.
#[derive(Debug, clap::Args)]
pub struct CommonArgs {
    /// The `pigeon` binary to run (default: next to this executable, then PATH).
    #[arg(long)]
    pub pigeon: Option<PathBuf>,
    /// Multiply every censor duration by this (0.01 turns a 180 s penalty into 1.8 s).
    #[arg(long, default_value_t = 0.01)]
    pub time_scale: f64,
    /// Give up on one client step after this many seconds.
    #[arg(long, default_value_t = 10)]
    pub step_timeout: u64,
}

/// `pigeon lab run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The censor profile: a built-in name or a TOML file. `--profile NAME` says the same
    /// (lab commands have no user profile).
    #[arg(id = "censor", long = "censor", value_name = "PROFILE")]
    pub profile: Option<String>,
    /// Transport.
    #[arg(long, default_value = "tcp")]
    pub transport: String,
    /// How the clients reach the relay: `direct`; `proxy`, a volunteer proxy abroad in front
    /// of a relay whose address is blocked; `hop`, a domestic hop (allow-listed) whose onward
    /// leg crosses a second censor. `proxy` and `hop` carry the tls transport.
    #[arg(long, default_value = "direct", value_parser = parse_via)]
    pub via: Via,
    /// With `--via hop`: the profile the hop's onward leg crosses (default: the profile's
    /// `hop_onward`, else the profile itself).
    #[arg(long, value_name = "PROFILE")]
    pub onward: Option<String>,
    /// Seed for the censor's randomness (default: random, printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: CommonArgs,
}

/// `pigeon lab matrix`.
#[derive(Debug, clap::Args)]
pub struct MatrixArgs {
    /// Where to write the table.
    #[arg(long, default_value = "LAB.md")]
    pub out: PathBuf,
    /// Seed for every scenario (default: random, printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Print JSON lines as scenarios finish.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: CommonArgs,
}

/// `pigeon lab probe`.
#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// The server to probe (HOST:PORT).
    pub target: SocketAddr,
    /// A real website to compare against (HOST:PORT).
    #[arg(long)]
    pub reference: SocketAddr,
    /// A recorded first flight (raw bytes of the client's first packet) for R1–R5.
    #[arg(long)]
    pub first_flight: Option<PathBuf>,
    /// Server name for the HTTPS and HTTP/2 probes.
    #[arg(long)]
    pub sni: Option<String>,
    /// Per-probe timeout in milliseconds.
    #[arg(long, default_value_t = 3000)]
    pub timeout_ms: u64,
    /// Seed for the probes' random bytes.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `pigeon lab up`.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// The censor profile: a built-in name or a TOML file [default: open]. `--profile NAME`
    /// says the same (lab commands have no user profile).
    #[arg(id = "censor", long = "censor", value_name = "PROFILE")]
    pub profile: Option<String>,
    /// Seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Time scale.
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// On exit, save each TCP flow's first client data segment here (for `probe --first-flight`).
    #[arg(long)]
    pub record: Option<PathBuf>,
}

/// `pigeon lab profiles`.
#[derive(Debug, clap::Args)]
pub struct ProfilesArgs {
    /// Print this profile's TOML.
    pub show: Option<String>,
}

fn parse_via(s: &str) -> Result<Via, String> {
    s.parse()
}

fn seed_or_random(seed: Option<u64>) -> u64 {
    seed.unwrap_or_else(rand::random)
}

fn print_table(results: &[ScenarioResult]) {
    println!("{}", runner::markdown(results));
}

/// Runs a lab command. `profile` is the `pigeon` command's `--profile` when given on the
/// command line: for lab commands it names the censor profile (as `--censor` does).
///
/// # Errors
/// What failed, with context; and when a scenario its profile expects to pass fails.
pub async fn run(cmd: LabCommand, profile: Option<String>) -> anyhow::Result<()> {
    match cmd {
        LabCommand::Run(a) => {
            let Some(name) = a.profile.or(profile) else {
                bail!(
                    "which censor? --censor PROFILE (or --profile PROFILE); `pigeon lab profiles` lists them"
                );
            };
            let seed = seed_or_random(a.seed);
            let onward = a.onward.as_deref().map(Profile::load).transpose()?;
            let scenario = Scenario {
                profile: Profile::load(&name)?,
                transport: a.transport,
                via: a.via,
                onward,
                seed,
                time_scale: a.common.time_scale,
                pigeon: runner::find_pigeon(a.common.pigeon.as_deref())?,
                step_timeout: Duration::from_secs(a.common.step_timeout),
            };
            let r = runner::run_scenario(&scenario)
                .await
                .with_context(|| format!("scenario failed to run (seed {seed})"))?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print_table(std::slice::from_ref(&r));
                if let Some(e) = &r.error {
                    println!("stopped: {e}");
                }
            }
            if r.expected_pass && !r.got_through {
                bail!(
                    "{} over {} via {} was expected to get through and did not (seed {seed})",
                    r.profile,
                    r.transport,
                    r.via
                );
            }
            Ok(())
        }
        LabCommand::Matrix(a) => {
            let seed = seed_or_random(a.seed);
            eprintln!("matrix seed {seed}");
            let pigeon = runner::find_pigeon(a.common.pigeon.as_deref())?;
            let mut results = Vec::new();
            for profile in Profile::builtins()? {
                for (via, t) in VIAS
                    .iter()
                    .flat_map(|v| TRANSPORTS.iter().map(move |t| (*v, *t)))
                    .filter(|(v, t)| v.carries(t))
                {
                    let scenario = Scenario {
                        profile: profile.clone(),
                        transport: t.to_owned(),
                        via,
                        onward: None,
                        seed,
                        time_scale: a.common.time_scale,
                        pigeon: pigeon.clone(),
                        step_timeout: Duration::from_secs(a.common.step_timeout),
                    };
                    let r = runner::run_scenario(&scenario).await.with_context(|| {
                        format!("{} × {t} via {via} (seed {seed})", profile.name)
                    })?;
                    if a.json {
                        println!("{}", serde_json::to_string(&r)?);
                    }
                    results.push(r);
                }
            }
            let text = format!(
                "# Censorship lab results\n\nWritten by `pigeon lab matrix --seed {seed} --out {}`. \
                 `mode = channel` means the Noise channel to the relay was measured (the client CLI \
                 was not available); `conversation` means two `pigeon` clients talked. \
                 \"first message\" runs from a `send` to the other side's `read` showing it; \
                 \"bytes received\" is what the readers printed; \"IP bytes s→c\" what the censor \
                 forwarded toward the clients. \"via\" is what the lab set up (a proxy abroad in \
                 front of a relay on a blocked address, or a domestic hop behind a second \
                 censor); \"route\" is the way the client says it went (`pigeon connect`): where \
                 the censor does not block the relay, the direct route wins.\n\n{}",
                a.out.display(),
                runner::markdown(&results)
            );
            std::fs::write(&a.out, text).with_context(|| format!("writing {}", a.out.display()))?;
            if !a.json {
                print_table(&results);
            }
            let failed: Vec<String> = results
                .iter()
                .filter(|r| r.expected_pass && !r.got_through)
                .map(|r| format!("{} × {} via {}", r.profile, r.transport, r.via))
                .collect();
            if !failed.is_empty() {
                bail!(
                    "expected to get through and did not: {} (seed {seed})",
                    failed.join(", ")
                );
            }
            Ok(())
        }
        LabCommand::Probe(a) => {
            let first = match &a.first_flight {
                Some(p) => {
                    Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?)
                }
                None => None,
            };
            let timeout = Duration::from_millis(a.timeout_ms);
            let (target, reference) = tokio::task::spawn_blocking(move || {
                let t = probe::suite(
                    a.target,
                    first.as_deref(),
                    a.sni.as_deref(),
                    a.seed,
                    timeout,
                );
                let r = probe::suite(
                    a.reference,
                    first.as_deref(),
                    a.sni.as_deref(),
                    a.seed,
                    timeout,
                );
                (t, r)
            })
            .await?;
            let cmp = probe::compare(&target, &reference);
            let (flagged, why) = probe::judge(&target);
            if a.json {
                let out = serde_json::json!({
                    "target": a.target.to_string(),
                    "reference": a.reference.to_string(),
                    "probes": cmp,
                    "differs": cmp.iter().any(|c| c.differs),
                    "censor_verdict": { "flagged": flagged, "why": why },
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                let mut w = std::io::stdout().lock();
                writeln!(
                    w,
                    "{:<12} {:<10} {:<28} {:<28} why",
                    "probe", "differs", "target", "reference"
                )?;
                let show = |r: &Option<probe::Reaction>| {
                    r.as_ref().map_or("—".into(), |r| {
                        format!("{:?} {}B back {}ms", r.close, r.received, r.millis)
                    })
                };
                for c in &cmp {
                    writeln!(
                        w,
                        "{:<12} {:<10} {:<28} {:<28} {}",
                        c.probe,
                        c.differs,
                        show(&c.target),
                        show(&c.reference),
                        c.why
                    )?;
                }
                writeln!(
                    w,
                    "censor verdict on target: {} ({why})",
                    if flagged { "FLAGGED" } else { "not flagged" }
                )?;
            }
            Ok(())
        }
        LabCommand::Up(a) => {
            let seed = seed_or_random(a.seed);
            let mut lab = crate::net::lab::Lab::start(
                Profile::load(&a.profile.or(profile).unwrap_or_else(|| "open".to_owned()))?,
                seed,
                a.time_scale,
            )
            .await?;
            println!(
                "lab up: profile {} seed {seed}\n  clients: ip netns exec {} …  (10.77.1.2, 10.77.1.3)\n  servers: ip netns exec {} …  (foreign 203.0.113.10/.11, domestic 198.51.100.10)\n  censor:  {}\nCtrl-C to tear down.",
                lab.profile.name,
                lab.topology.client.name(),
                lab.topology.server.name(),
                lab.topology.router.name(),
            );
            tokio::signal::ctrl_c()
                .await
                .context("waiting for Ctrl-C")?;
            let done = lab.finish();
            println!(
                "packets {} dropped {} injected {}",
                done.stats.packets, done.stats.dropped, done.stats.injected
            );
            if let Some(dir) = &a.record {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                for (i, (server, bytes)) in done.first_flights.iter().enumerate() {
                    let path = dir.join(format!("{i:03}-{}-{}.bin", server.ip(), server.port()));
                    std::fs::write(&path, bytes)
                        .with_context(|| format!("writing {}", path.display()))?;
                }
                println!(
                    "saved {} first flights in {}",
                    done.first_flights.len(),
                    dir.display()
                );
            }
            for h in &done.hellos {
                println!(
                    "hello {} sni={} JA4 {}",
                    h.flow,
                    h.sni.as_deref().unwrap_or("-"),
                    h.ja4
                );
            }
            for e in done.events.iter().rev().take(50).rev() {
                println!(
                    "{:>9.3}s {} {} {}",
                    e.at.as_secs_f64(),
                    e.rule,
                    e.flow,
                    e.detail
                );
            }
            Ok(())
        }
        LabCommand::Profiles(a) => {
            match a.show {
                Some(name) => {
                    let Some((_, text)) = BUILTIN.iter().find(|(n, _)| *n == name) else {
                        bail!("no built-in profile {name:?}");
                    };
                    print!("{text}");
                }
                None => {
                    for p in Profile::builtins()? {
                        println!("{:<22} {}", p.name, p.description);
                    }
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(subcommand)]
        lab: LabCommand,
    }

    #[test]
    fn command_line_is_consistent() {
        Wrapper::command().debug_assert();
        let w = Wrapper::try_parse_from([
            "lab",
            "run",
            "--censor",
            "ru-home-2026",
            "--transport",
            "tls",
            "--via",
            "hop",
            "--seed",
            "7",
            "--json",
        ])
        .expect("parses");
        assert!(matches!(
            w.lab,
            LabCommand::Run(RunArgs {
                seed: Some(7),
                json: true,
                via: Via::Hop,
                ..
            })
        ));
        let w = Wrapper::try_parse_from([
            "lab",
            "probe",
            "203.0.113.10:4433",
            "--reference",
            "203.0.113.11:443",
        ])
        .expect("parses");
        assert!(matches!(w.lab, LabCommand::Probe(_)));
    }
}
