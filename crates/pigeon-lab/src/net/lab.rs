//! A whole lab: topology, the censor's router and the DNS resolvers, torn down on drop.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::router::{Finished, Router, Stats};
use super::{
    HOP_SIDE, OPERATOR_RESOLVER, PUBLIC_RESOLVER, Topology, lab_available, lab_zone, sys,
    unique_prefix,
};
use crate::LabError;
use crate::censor::Censor;
use crate::dns::{Zone, server};
use crate::profile::Profile;

/// A running lab. Fields drop in order: resolvers, router, then the namespaces.
#[derive(Debug)]
pub struct Lab {
    dns_stop: watch::Sender<bool>,
    dns_tasks: Vec<JoinHandle<()>>,
    router: Option<Router>,
    /// The onward censor's router, in a lab with a hop.
    onward_router: Option<Router>,
    /// The namespaces. Run processes with `lab.topology.client.command(..)`.
    pub topology: Topology,
    /// The profile the censor runs.
    pub profile: Profile,
    /// The profile the onward censor (between the hop and the servers) runs, with a hop.
    pub onward: Option<Profile>,
    /// The seed of the censor's randomness.
    pub seed: u64,
}

/// Binds UDP and TCP sockets on `addr` inside namespace `ns` (from a thread that enters it).
fn bind_in(
    ns: &str,
    addr: SocketAddr,
) -> Result<(std::net::UdpSocket, std::net::TcpListener), LabError> {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        sys::enter_netns(&ns)?;
        let udp = std::net::UdpSocket::bind(addr)
            .map_err(|e| LabError::io(format!("binding UDP {addr}"), e))?;
        let tcp = std::net::TcpListener::bind(addr)
            .map_err(|e| LabError::io(format!("binding TCP {addr}"), e))?;
        udp.set_nonblocking(true)
            .map_err(|e| LabError::io("nonblocking", e))?;
        tcp.set_nonblocking(true)
            .map_err(|e| LabError::io("nonblocking", e))?;
        Ok((udp, tcp))
    })
    .join()
    .map_err(|_| LabError::net("binding in namespace", "thread panicked"))?
}

impl Lab {
    /// Builds the namespaces, starts the censor with `profile` (randomness from `seed`,
    /// durations times `time_scale`) and the resolvers: the operator's at 198.51.100.53 (with
    /// rule 1's NXDOMAIN list) and an honest public one at 192.0.2.53.
    ///
    /// # Errors
    /// [`LabError::Net`] when the machine cannot host a lab (not root, no TUN) or a step fails;
    /// whatever was created is removed again.
    pub async fn start(profile: Profile, seed: u64, time_scale: f64) -> Result<Self, LabError> {
        Self::start_inner(profile, None, seed, time_scale).await
    }

    /// As [`Self::start`], with a domestic hop at [`super::HOP`] (in `topology.hop`) whose
    /// onward path to the servers crosses a second censor running `onward`. That censor's
    /// `clients` set becomes the hop's side; its randomness comes from `seed + 1`.
    ///
    /// # Errors
    /// As [`Self::start`].
    pub async fn start_with_hop(
        profile: Profile,
        onward: Profile,
        seed: u64,
        time_scale: f64,
    ) -> Result<Self, LabError> {
        Self::start_inner(profile, Some(onward), seed, time_scale).await
    }

    async fn start_inner(
        profile: Profile,
        onward: Option<Profile>,
        seed: u64,
        time_scale: f64,
    ) -> Result<Self, LabError> {
        lab_available().map_err(|e| LabError::net("lab prerequisites", e))?;
        let zone = lab_zone();
        let censor = Censor::new(profile.clone(), zone.clone(), seed, time_scale)?;
        let national = Censor::resolver_zone_for(&profile, &zone);
        let onward_censor = match &onward {
            Some(p) => {
                let mut p = p.clone();
                p.networks.clients = vec![HOP_SIDE.to_owned()];
                Some(Censor::new(
                    p,
                    zone.clone(),
                    seed.wrapping_add(1),
                    time_scale,
                )?)
            }
            None => None,
        };
        let topology = tokio::task::spawn_blocking(move || {
            let topology = Topology::create(&unique_prefix(), onward_censor.is_some())?;
            let router = Router::start(topology.router.name(), censor)?;
            Topology::route_through_tun(&topology.router)?;
            let onward_router = match (&topology.hop, onward_censor) {
                (Some(hop), Some(censor)) => {
                    let r = Router::start(hop.router.name(), censor)?;
                    Topology::route_through_tun(&hop.router)?;
                    Some(r)
                }
                _ => None,
            };
            Ok::<_, LabError>((topology, router, onward_router))
        })
        .await
        .map_err(|e| LabError::net("lab setup task", e))??;
        let (topology, router, onward_router) = topology;
        let (dns_stop, _) = watch::channel(false);
        let mut lab = Self {
            dns_stop,
            dns_tasks: Vec::new(),
            router: Some(router),
            onward_router,
            topology,
            profile,
            onward,
            seed,
        };
        lab.start_resolver(OPERATOR_RESOLVER, national)?;
        lab.start_resolver(PUBLIC_RESOLVER, zone)?;
        tracing::info!(profile = %lab.profile.name, seed, "lab up");
        Ok(lab)
    }

    fn start_resolver(&mut self, ip: Ipv4Addr, zone: Zone) -> Result<(), LabError> {
        let (udp, tcp) = bind_in(self.topology.server.name(), SocketAddr::from((ip, 53)))?;
        let udp =
            tokio::net::UdpSocket::from_std(udp).map_err(|e| LabError::io("DNS socket", e))?;
        let tcp =
            tokio::net::TcpListener::from_std(tcp).map_err(|e| LabError::io("DNS socket", e))?;
        let stop = self.dns_stop.subscribe();
        self.dns_tasks
            .push(tokio::spawn(server::serve(udp, tcp, Arc::new(zone), stop)));
        Ok(())
    }

    /// Live counters of the censor.
    pub fn stats(&self) -> Stats {
        self.router.as_ref().map(Router::stats).unwrap_or_default()
    }

    /// Stops the censor and returns its counters and events; the namespaces go when `self`
    /// is dropped.
    pub fn finish(&mut self) -> Finished {
        let _ = self.dns_stop.send(true);
        for t in &self.dns_tasks {
            t.abort();
        }
        self.router
            .take()
            .map_or_else(Finished::default, Router::stop)
    }

    /// Stops the onward censor (in a lab with a hop) and returns its counters and events.
    pub fn finish_onward(&mut self) -> Option<Finished> {
        self.onward_router.take().map(Router::stop)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for t in &self.dns_tasks {
            t.abort();
        }
    }
}
