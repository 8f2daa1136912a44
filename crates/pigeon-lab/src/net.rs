//! The lab network: namespaces, veth pairs, the TUN device and the userspace router.
//!
//! ```text
//!  client ns                    router ns (the censor)                      server ns
//!  10.77.1.2, .3  ── veth ──  c0 10.77.1.1                s0 10.77.2.1 ── veth ── 10.77.2.2
//!  default via .1             ip rule: iif c0/s0 → table 100: default dev t0       on lo:
//!                             t0 (TUN) ⇄ userspace router ⇄ Censor::handle        203.0.113.10 foreign
//!                             packets written back to t0 leave by the main table   198.51.100.10 domestic
//!                                                                                  198.51.100.53 resolver
//!                                                                                  192.0.2.53 public DNS
//! ```
//!
//! A lab with a hop ([`Topology::create`] with `hop`) adds a domestic server with a second
//! censor behind it, on the path a domestic hop's onward leg takes abroad:
//!
//! ```text
//!  client ns ── router ns (censor) ──┬── server ns (as above)
//!                          h0 10.77.3.1│
//!                                      └── hop ns: h1 10.77.3.2, 198.51.100.20 on lo (allow-listed)
//!                                          g1 10.77.4.2, default via .1
//!                                            │
//!                                          onward router ns (second censor): g0 10.77.4.1, s2 10.77.5.1
//!                                            │
//!                                          server ns: s3 10.77.5.2, route 10.77.4.0/24 via .1
//! ```
//!
//! The client reaches the hop through the first censor only; the hop reaches the relay through
//! the second only, whose `clients` set is the hop's side (10.77.4.0/24).
//!
//! Every forwarded packet, in both directions, goes up the TUN device to [`router`], which asks
//! the sans-IO [`crate::censor::Censor`] and writes the packet (and anything injected) back.
//! Packets the router itself sends (the active prober) are local to the router namespace and
//! bypass the TUN path. Nothing is routed outside the lab's namespaces: the only links are the
//! two veth pairs, and no namespace has a route to the host.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::LabError;
use crate::dns::Zone;

pub mod lab;
pub mod router;
pub(crate) mod sys;

/// The client's first address.
pub const CLIENT_A: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 2);
/// The client's second address.
pub const CLIENT_B: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 3);
/// The router's address on the server side (the prober's source).
pub const ROUTER_SERVER_SIDE: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 1);
/// A server on foreign hosting.
pub const FOREIGN: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// A second foreign-hosting server.
pub const FOREIGN_2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);
/// A foreign server on the default IP block list.
pub const FOREIGN_LISTED: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 66);
/// A domestic (and, in allow-list mode, allow-listed) server.
pub const DOMESTIC: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
/// The domestic hop's address (allow-listed), in a lab with a hop.
pub const HOP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 20);
/// The hop's side of the onward censor: its `clients` set.
pub const HOP_SIDE: &str = "10.77.4.0/24";
/// The operator's (national) resolver.
pub const OPERATOR_RESOLVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 53);
/// A public resolver (the censor intercepts its UDP/53).
pub const PUBLIC_RESOLVER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 53);
/// A messenger voice relay.
pub const MESSENGER_RELAY: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 140);

/// The honest DNS of the lab: names of the servers above.
pub fn lab_zone() -> Zone {
    let mut z = Zone::default();
    for (name, ip) in [
        ("relay.example", FOREIGN),
        ("foreign.example", FOREIGN),
        ("exempt.example", FOREIGN),
        ("blocked.example", FOREIGN_2),
        ("web.whatsapp.com", FOREIGN_2),
        ("whatsapp.com", FOREIGN_2),
        ("cloudflare-ech.com", FOREIGN_2),
        ("listed.example", FOREIGN_LISTED),
        ("site.domestic", DOMESTIC),
        ("throttled.example", DOMESTIC),
        ("relay.domestic", DOMESTIC),
        ("hop.domestic", HOP),
        ("proxy.example", FOREIGN),
    ] {
        z.records.insert(name.into(), vec![ip]);
    }
    z
}

/// Runs `ip` with `args`; fails with its stderr.
pub(crate) fn ip(args: &[&str]) -> Result<(), LabError> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| LabError::net("running ip", e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(LabError::net(
            format!("ip {}", args.join(" ")),
            String::from_utf8_lossy(&out.stderr).trim(),
        ))
    }
}

fn sysctl(ns: &str, key: &str, value: &str) -> Result<(), LabError> {
    // Inside a namespace /proc/sys/net reflects that namespace; `ip netns exec` gives us one.
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            &format!("{key}={value}"),
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| LabError::net("running sysctl", e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(LabError::net(
            format!("sysctl {key} in {ns}"),
            String::from_utf8_lossy(&out.stderr).trim(),
        ))
    }
}

/// Whether this process can build a lab (root, `ip`, `/dev/net/tun`).
pub fn lab_available() -> Result<(), String> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| format!("cannot run id: {e}"))?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Err("the lab needs root (network namespaces, TUN)".into());
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Err("/dev/net/tun is missing".into());
    }
    Command::new("ip")
        .arg("-V")
        .output()
        .map_err(|e| format!("iproute2's `ip` is missing: {e}"))?;
    Ok(())
}

/// Runs `f` on a new thread inside namespace `ns` and returns its result: every socket `f`
/// opens belongs to that namespace. (A fresh thread each time: entering a namespace is
/// permanent for the thread.)
///
/// # Errors
/// [`LabError::Net`] if the namespace cannot be entered or the thread dies.
pub fn run_in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, LabError> {
    let ns = ns.to_owned();
    std::thread::spawn(move || sys::enter_netns(&ns).map(|()| f()))
        .join()
        .map_err(|_| LabError::net("thread in namespace", "panicked"))?
}

/// A network namespace that is deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    etc: PathBuf,
}

impl Netns {
    /// Creates namespace `name` with loopback up and IPv6 off.
    ///
    /// # Errors
    /// [`LabError::Net`] if `ip netns add` fails.
    pub fn create(name: &str) -> Result<Self, LabError> {
        if ip(&["netns", "add", name]).is_err() {
            // A namespace left by a killed run whose pid was reused: remove it and retry once.
            let _ = ip(&["netns", "del", name]);
            ip(&["netns", "add", name])?;
        }
        let ns = Self {
            name: name.to_owned(),
            etc: PathBuf::from("/etc/netns").join(name),
        };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        sysctl(name, "net.ipv6.conf.all.disable_ipv6", "1")?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Makes `ip netns exec` give processes in this namespace `resolver` as their DNS server
    /// (through `/etc/netns/NAME/resolv.conf`, removed on drop).
    ///
    /// # Errors
    /// [`LabError::Io`] if the file cannot be written.
    pub fn set_resolver(&self, resolver: Ipv4Addr) -> Result<(), LabError> {
        std::fs::create_dir_all(&self.etc)
            .map_err(|e| LabError::io(format!("creating {}", self.etc.display()), e))?;
        let path = self.etc.join("resolv.conf");
        std::fs::write(
            &path,
            format!("nameserver {resolver}\noptions timeout:1 attempts:2\n"),
        )
        .map_err(|e| LabError::io(format!("writing {}", path.display()), e))
    }

    /// A command run inside this namespace.
    pub fn command(&self, program: &str) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            tracing::warn!(ns = %self.name, error = %e, "could not delete namespace");
        }
        if self.etc.exists() {
            let _ = std::fs::remove_dir_all(&self.etc);
        }
    }
}

static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short unique prefix for this process's next lab (namespace names stay under 15 bytes).
pub fn unique_prefix() -> String {
    let n = LAB_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("pl{:x}{n:x}", std::process::id() % 0xfffff)
}

/// The namespaces of a lab, wired and addressed. Dropping it deletes them all.
#[derive(Debug)]
pub struct Topology {
    /// Where clients run.
    pub client: Netns,
    /// Where servers (relay, web sites, resolvers) run.
    pub server: Netns,
    /// The domestic hop and the censor on its onward path, when the lab has them.
    pub hop: Option<HopNet>,
    /// The censor's router. Dropped last.
    pub router: Netns,
}

/// The hop's namespaces (see the module docs).
#[derive(Debug)]
pub struct HopNet {
    /// Where the hop runs (at [`HOP`]).
    pub hop: Netns,
    /// The onward censor's router.
    pub router: Netns,
}

/// Name of the TUN device in the router namespace.
pub const TUN_NAME: &str = "t0";

impl Topology {
    /// Creates the namespaces, veth pairs, addresses and routes (not the TUN device, which the
    /// router thread creates, see [`router::Router::start`]).
    ///
    /// # Errors
    /// [`LabError::Net`] on any failed step; namespaces created so far are removed.
    pub fn create(prefix: &str, hop: bool) -> Result<Self, LabError> {
        let router = Netns::create(&format!("{prefix}r"))?;
        let client = Netns::create(&format!("{prefix}c"))?;
        let server = Netns::create(&format!("{prefix}s"))?;
        let (r, c, s) = (router.name(), client.name(), server.name());
        router_sysctls(r)?;
        veth((r, "c0", "10.77.1.1/24"), (c, "c1", "10.77.1.2/24"))?;
        veth((r, "s0", "10.77.2.1/24"), (s, "s1", "10.77.2.2/24"))?;
        ip(&["-n", c, "addr", "add", "10.77.1.3/24", "dev", "c1"])?;
        ip(&["-n", c, "route", "add", "default", "via", "10.77.1.1"])?;
        ip(&["-n", s, "route", "add", "default", "via", "10.77.2.1"])?;
        for addr in [
            FOREIGN,
            FOREIGN_2,
            FOREIGN_LISTED,
            DOMESTIC,
            OPERATOR_RESOLVER,
            PUBLIC_RESOLVER,
            MESSENGER_RELAY,
        ] {
            ip(&["-n", s, "addr", "add", &format!("{addr}/32"), "dev", "lo"])?;
        }
        route_servers(r, "10.77.2.2", "s0")?;
        // Everything arriving from either side goes up the TUN device to the censor.
        through_censor(r, &["c0", "s0"])?;
        client.set_resolver(OPERATOR_RESOLVER)?;
        // Servers that look names up (a proxy abroad) ask the honest public resolver.
        server.set_resolver(PUBLIC_RESOLVER)?;
        let hop = if hop {
            Some(HopNet::create(prefix, &router, &server)?)
        } else {
            None
        };
        Ok(Self {
            client,
            server,
            hop,
            router,
        })
    }

    /// Brings the TUN device of `router` up and routes its table 100 through it (after the
    /// router thread opened it).
    ///
    /// # Errors
    /// [`LabError::Net`] if a step fails.
    pub fn route_through_tun(router: &Netns) -> Result<(), LabError> {
        let r = router.name();
        ip(&["-n", r, "link", "set", TUN_NAME, "up"])?;
        sysctl(r, &format!("net.ipv4.conf.{TUN_NAME}.rp_filter"), "0")?;
        sysctl(r, &format!("net.ipv4.conf.{TUN_NAME}.forwarding"), "1")?;
        ip(&[
            "-n", r, "route", "add", "default", "dev", TUN_NAME, "table", "100",
        ])
    }
}

/// A veth pair between two namespaces, each end (namespace, interface, address) addressed
/// and up.
fn veth(a: (&str, &str, &str), b: (&str, &str, &str)) -> Result<(), LabError> {
    ip(&[
        "-n", a.0, "link", "add", a.1, "type", "veth", "peer", "name", b.1, "netns", b.0,
    ])?;
    for (ns, dev, addr) in [a, b] {
        ip(&["-n", ns, "addr", "add", addr, "dev", dev])?;
        ip(&["-n", ns, "link", "set", dev, "up"])?;
    }
    Ok(())
}

/// Routes the lab's server ranges from `router` to the server namespace's `gateway` on `dev`.
fn route_servers(router: &str, gateway: &str, dev: &str) -> Result<(), LabError> {
    for net in ["203.0.113.0/24", "198.51.100.0/24", "192.0.2.0/24"] {
        ip(&[
            "-n", router, "route", "add", net, "via", gateway, "dev", dev,
        ])?;
    }
    Ok(())
}

/// Sends everything arriving on `ifaces` in `router` up its TUN device (table 100).
fn through_censor(router: &str, ifaces: &[&str]) -> Result<(), LabError> {
    for (i, iface) in ifaces.iter().enumerate() {
        let priority = (100 + i).to_string();
        ip(&[
            "-n", router, "rule", "add", "iif", iface, "lookup", "100", "priority", &priority,
        ])?;
    }
    Ok(())
}

/// Forwarding on, reverse-path filtering off: a router namespace.
fn router_sysctls(r: &str) -> Result<(), LabError> {
    for key in ["net.ipv4.ip_forward", "net.ipv4.conf.all.forwarding"] {
        sysctl(r, key, "1")?;
    }
    for key in [
        "net.ipv4.conf.all.rp_filter",
        "net.ipv4.conf.default.rp_filter",
    ] {
        sysctl(r, key, "0")?;
    }
    Ok(())
}

impl HopNet {
    /// Adds the hop and the onward router to a lab whose first router and server are made.
    fn create(prefix: &str, first: &Netns, server: &Netns) -> Result<Self, LabError> {
        let hop = Netns::create(&format!("{prefix}h"))?;
        let router = Netns::create(&format!("{prefix}q"))?;
        let (r1, h, r2, s) = (first.name(), hop.name(), router.name(), server.name());
        router_sysctls(r2)?;
        // First censor ⇄ hop.
        veth((r1, "h0", "10.77.3.1/24"), (h, "h1", "10.77.3.2/24"))?;
        let hop_host = format!("{HOP}/32");
        ip(&["-n", h, "addr", "add", &hop_host, "dev", "lo"])?;
        ip(&[
            "-n",
            r1,
            "route",
            "add",
            &hop_host,
            "via",
            "10.77.3.2",
            "dev",
            "h0",
        ])?;
        ip(&[
            "-n", r1, "rule", "add", "iif", "h0", "lookup", "100", "priority", "102",
        ])?;
        ip(&["-n", h, "route", "add", "10.77.1.0/24", "via", "10.77.3.1"])?;
        // Hop ⇄ onward censor ⇄ server.
        veth((r2, "g0", "10.77.4.1/24"), (h, "g1", "10.77.4.2/24"))?;
        veth((r2, "s2", "10.77.5.1/24"), (s, "s3", "10.77.5.2/24"))?;
        ip(&["-n", h, "route", "add", "default", "via", "10.77.4.1"])?;
        ip(&["-n", s, "route", "add", "10.77.4.0/24", "via", "10.77.5.1"])?;
        route_servers(r2, "10.77.5.2", "s2")?;
        through_censor(r2, &["g0", "s2"])?;
        hop.set_resolver(OPERATOR_RESOLVER)?;
        Ok(Self { hop, router })
    }
}
