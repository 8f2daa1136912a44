//! The userspace router: reads every packet from the TUN device, asks the censor, writes back.
//!
//! It runs on its own OS thread, which first enters the router namespace (so the TUN device and
//! the prober's sockets live there). The loop is bounded by a stop flag checked at least every
//! 20 ms. The censor is sans-IO; this loop is its only clock (`Instant` since start) and its only
//! IO. Active probes (rule 7) run on short-lived threads spawned from here, so they too are in
//! the router namespace; their verdicts come back over a channel.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::LabError;
use crate::censor::{Censor, Event, ProbeJob, RuleId, SeenHello};
use crate::probe;

use super::{TUN_NAME, sys};

/// Counters shared with the outside while the router runs.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Packets read from the TUN device.
    pub packets: u64,
    /// Packets dropped by the censor.
    pub dropped: u64,
    /// Packets injected by the censor.
    pub injected: u64,
    /// IP bytes forwarded client→server.
    pub bytes_up: u64,
    /// IP bytes forwarded server→client.
    pub bytes_down: u64,
    /// Rules fired so far.
    pub fired: std::collections::BTreeMap<RuleId, u64>,
}

/// A running router. Stop it with [`Router::stop`]; dropping it stops it too.
#[derive(Debug)]
pub struct Router {
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<Stats>>,
    thread: Option<JoinHandle<Censor>>,
}

/// What a stopped router hands back.
#[derive(Debug, Default)]
pub struct Finished {
    /// Final counters.
    pub stats: Stats,
    /// The censor's event log.
    pub events: Vec<Event>,
    /// The ClientHellos the censor saw, with their JA4.
    pub hellos: Vec<SeenHello>,
    /// First client data segments of TCP flows, with their servers.
    pub first_flights: Vec<(std::net::SocketAddrV4, Vec<u8>)>,
}

impl Router {
    /// Starts the router in namespace `ns`, creating the TUN device there, with `censor`.
    /// Returns once the device exists (the caller then routes through it).
    ///
    /// # Errors
    /// [`LabError::Net`] if the namespace cannot be entered or the device created.
    pub fn start(ns: &str, censor: Censor) -> Result<Self, LabError> {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(Stats::default()));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), LabError>>();
        let ns = ns.to_owned();
        let (stop2, stats2) = (Arc::clone(&stop), Arc::clone(&stats));
        let thread = std::thread::Builder::new()
            .name("lab-router".into())
            .spawn(move || {
                let opened = sys::enter_netns(&ns).and_then(|()| sys::Tun::create(TUN_NAME));
                match opened {
                    Ok(tun) => {
                        let _ = ready_tx.send(Ok(()));
                        run(tun, censor, &stop2, &stats2)
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        censor
                    }
                }
            })
            .map_err(|e| LabError::io("spawning the router thread", e))?;
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(Self {
                stop,
                stats,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err(LabError::net("router start", "timed out")),
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Stops the router and returns its counters and event log.
    pub fn stop(mut self) -> Finished {
        self.finish()
    }

    fn finish(&mut self) -> Finished {
        self.stop.store(true, Ordering::Relaxed);
        let censor = self.thread.take().and_then(|t| t.join().ok());
        Finished {
            stats: self.stats(),
            events: censor
                .as_ref()
                .map(|c| c.events().to_vec())
                .unwrap_or_default(),
            hellos: censor
                .as_ref()
                .map(|c| c.hellos().to_vec())
                .unwrap_or_default(),
            first_flights: censor
                .as_ref()
                .map(|c| c.first_flights().to_vec())
                .unwrap_or_default(),
        }
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.finish();
        }
    }
}

/// Most probe threads alive at once.
const MAX_PROBERS: usize = 4;

fn run(tun: sys::Tun, mut censor: Censor, stop: &AtomicBool, stats: &Mutex<Stats>) -> Censor {
    let start = Instant::now();
    let mut buf = vec![0u8; 65_536];
    let (verdict_tx, verdict_rx) = mpsc::channel::<(ProbeJob, bool, String)>();
    let mut probers = 0usize;
    let mut local = Stats::default();
    let mut last_publish = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let got = match tun.recv(&mut buf, Duration::from_millis(20)) {
            Ok(got) => got,
            Err(e) => {
                tracing::warn!(error = %e, "TUN read failed; router stops");
                break;
            }
        };
        if let Some(n) = got {
            local.packets += 1;
            let out = censor.handle(start.elapsed(), &buf[..n]);
            if out.forward {
                // A failed write is a lost packet, as on any router.
                let _ = tun.send(&buf[..n]);
            } else {
                local.dropped += 1;
            }
            for p in &out.inject {
                local.injected += 1;
                let _ = tun.send(p);
            }
        }
        let now = start.elapsed();
        while let Ok((job, flagged, detail)) = verdict_rx.try_recv() {
            probers = probers.saturating_sub(1);
            censor.probe_verdict(now, &job, flagged, &detail);
        }
        if probers < MAX_PROBERS {
            for job in censor.poll_probes(now) {
                probers += 1;
                let tx = verdict_tx.clone();
                let spawned =
                    std::thread::Builder::new()
                        .name("lab-prober".into())
                        .spawn(move || {
                            let (flagged, detail) = probe::censor_probe(&job);
                            let _ = tx.send((job, flagged, detail));
                        });
                if spawned.is_err() {
                    probers -= 1;
                }
            }
        }
        if last_publish.elapsed() >= Duration::from_millis(100) {
            last_publish = Instant::now();
            local.fired = censor.fired().clone();
            (local.bytes_up, local.bytes_down) = censor.forwarded_bytes();
            if let Ok(mut s) = stats.lock() {
                *s = local.clone();
            }
        }
    }
    local.fired = censor.fired().clone();
    (local.bytes_up, local.bytes_down) = censor.forwarded_bytes();
    if let Ok(mut s) = stats.lock() {
        *s = local;
    }
    censor
}
