//! Entering a network namespace and creating a TUN device, through safe wrappers: `nix`'s
//! `setns(2)` and the `tun` crate's `TUNSETIFF`. The crate itself has no `unsafe`.

use std::fs::File;
use std::time::Duration;

use crate::LabError;

/// Moves the calling thread into the network namespace `/var/run/netns/{name}`. Threads it
/// spawns afterwards start in that namespace too.
///
/// # Errors
/// [`LabError::Net`] if the namespace does not exist or `setns` fails.
pub(crate) fn enter_netns(name: &str) -> Result<(), LabError> {
    let path = format!("/var/run/netns/{name}");
    let file = File::open(&path).map_err(|e| LabError::net(format!("open {path}"), e))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| LabError::net(format!("setns into {name}"), e))
}

/// A TUN device (layer 3, no packet-information header).
pub(crate) struct Tun(tun::Device);

impl Tun {
    /// Creates TUN device `name` in the calling thread's namespace (left down: the caller
    /// brings it up and routes through it).
    ///
    /// # Errors
    /// [`LabError::Net`] if `/dev/net/tun` is missing or creation fails (not root?).
    pub(crate) fn create(name: &str) -> Result<Self, LabError> {
        let mut config = tun::Configuration::default();
        config.tun_name(name).layer(tun::Layer::L3).mtu(1500);
        tun::create(&config)
            .map(Self)
            .map_err(|e| LabError::net(format!("creating TUN {name}"), e))
    }

    /// Reads one packet, waiting at most `timeout`; `Ok(None)` on timeout.
    pub(crate) fn recv(&self, buf: &mut [u8], timeout: Duration) -> std::io::Result<Option<usize>> {
        match self.0.recv_timeout(buf, timeout) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes one packet.
    pub(crate) fn send(&self, packet: &[u8]) -> std::io::Result<usize> {
        self.0.send(packet)
    }
}
