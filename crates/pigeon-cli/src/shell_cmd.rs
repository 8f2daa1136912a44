//! `pigeon completions SHELL` and `pigeon man`: shell completions and manual pages made from the
//! command definitions themselves, so they never drift from what `pigeon` accepts.

use std::io::Write as _;
use std::path::PathBuf;

/// `pigeon completions`.
#[derive(clap::Args, Debug)]
pub(crate) struct CompletionsArgs {
    /// The shell: bash, zsh, fish, elvish or powershell.
    shell: clap_complete::Shell,
}

/// `pigeon man`.
#[derive(clap::Args, Debug)]
pub(crate) struct ManArgs {
    /// Write one page per command (pigeon.1, pigeon-init.1, pigeon-group-create.1, …) into this
    /// directory instead of printing pigeon.1.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// Prints the completion script for `args.shell` (e.g. `pigeon completions bash >
/// /etc/bash_completion.d/pigeon`).
///
/// # Errors
/// When standard output cannot be written.
pub(crate) fn completions(args: &CompletionsArgs, mut cmd: clap::Command) -> anyhow::Result<()> {
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "pigeon", &mut out);
    print_all(&out)
}

/// Writes `bytes` to standard output; a reader that went away (`| head`) ends the program
/// quietly with a broken pipe's status, as for any Unix tool.
fn print_all(bytes: &[u8]) -> anyhow::Result<()> {
    match std::io::stdout().write_all(bytes) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(141),
        other => Ok(other?),
    }
}

/// Prints `pigeon.1`, or writes every command's page into `--dir`.
///
/// # Errors
/// When a page cannot be written.
pub(crate) fn man(args: &ManArgs, cmd: clap::Command) -> anyhow::Result<()> {
    let Some(dir) = &args.dir else {
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut out)?;
        return print_all(&out);
    };
    std::fs::create_dir_all(dir)?;
    let mut written = 0;
    write_pages(cmd, "pigeon", dir, &mut written)?;
    eprintln!("Wrote {written} manual pages into {}.", dir.display());
    Ok(())
}

fn write_pages(
    cmd: clap::Command,
    name: &str,
    dir: &std::path::Path,
    written: &mut usize,
) -> anyhow::Result<()> {
    let cmd = cmd.name(name.to_owned());
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let sub_name = format!("{name}-{}", sub.get_name());
        write_pages(sub.clone(), &sub_name, dir, written)?;
    }
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd).render(&mut out)?;
    std::fs::write(dir.join(format!("{name}.1")), out)?;
    *written += 1;
    Ok(())
}
