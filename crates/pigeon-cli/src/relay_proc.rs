//! A relay in a child process, for the demo and the benchmarks: the real binary, real sockets.

use anyhow::Context as _;
use pigeon_transport::RelayLink;
use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A running `pigeon relay` child; killed when dropped.
pub(crate) struct RelayProcess {
    child: Child,
    /// The link it printed.
    pub(crate) link: RelayLink,
}

impl RelayProcess {
    /// Starts `pigeon relay --data DIR --listen 127.0.0.1:0` plus `extra` arguments and waits
    /// for its link.
    pub(crate) fn start(data: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find the pigeon binary")?;
        let mut child = Command::new(exe)
            .arg("relay")
            .arg("--data")
            .arg(data)
            .args(["--listen", "127.0.0.1:0", "--no-qr"])
            .args(extra)
            .env(
                "PIGEON_LOG",
                std::env::var("PIGEON_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("could not start the relay process")?;
        let stdout = child.stdout.take().context("relay has no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .context("could not read the relay's link")?;
        let link = RelayLink::parse(line.trim())
            .with_context(|| format!("the relay printed no link (got {line:?})"))?;
        Ok(Self { child, link })
    }

    /// [`Self::start`] for a benchmark whose load comes from this one machine: the per-source
    /// caps and the idle timeout, which would rightly hold back one address opening thousands
    /// of connections, are lifted (`pigeon bench attack` keeps them, as they are what it
    /// measures).
    pub(crate) fn start_for_load(data: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        let mut args = vec![
            "--max-handshakes",
            "100000",
            "--max-handshakes-per-source",
            "100000",
            "--max-per-source",
            "1000000",
            "--idle-timeout",
            "86400",
            // The load comes from one address, making hundreds of mailboxes at once.
            "--creations-per-sec",
            "1000000",
            "--creations-per-source",
            "1000000",
        ];
        args.extend_from_slice(extra);
        Self::start(data, &args)
    }

    /// The relay's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Asks the relay to drain and waits for it to exit.
    pub(crate) fn stop(mut self) -> anyhow::Result<()> {
        // The `kill` command sends the signal, which keeps this crate free of `unsafe` FFI.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.child.wait()?;
        anyhow::ensure!(status.success(), "the relay exited with {status}");
        Ok(())
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
