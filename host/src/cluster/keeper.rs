//! The keeper thread: says the host is alive, renews its leases, takes its fair
//! share of partitions and gives up what is beyond it (the rules in `mod.rs`).

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::ownership::Ownership;
use crate::journal::postgres::leases::Leases;
use crate::journal::JournalResult;
use crate::names::PARTITIONS;

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This host's name among the hosts (`--node-id`).
    pub node: String,
    /// The URL other hosts forward requests to (`--advertise`).
    pub advertise: String,
    /// How long a lease lasts without renewal: how long a dead host's partitions
    /// wait before another host takes them.
    pub lease: Duration,
}

impl ClusterConfig {
    /// How often the keeper renews.
    pub fn tick(&self) -> Duration {
        self.lease / 4
    }

    /// How much sooner than the database this host stops counting on a lease
    /// (for the time a renewal takes to arrive and for clock rates that differ).
    pub fn margin(&self) -> Duration {
        self.lease / 5
    }
}

/// The running keeper. `leave` on a clean shutdown; dropping it leaves too.
pub struct Cluster {
    ownership: Arc<Ownership>,
    leases: Arc<Leases>,
    config: ClusterConfig,
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

struct Keeper {
    ownership: Arc<Ownership>,
    leases: Arc<Leases>,
    config: ClusterConfig,
}

impl Cluster {
    /// Say this host is alive, take its first share (so a host alone starts owning
    /// every partition), and keep at it on a thread. Fails when the database does.
    pub fn start(leases: Leases, config: ClusterConfig) -> JournalResult<Cluster> {
        let leases = Arc::new(leases);
        let ownership = Arc::new(Ownership::new(&config.node, Some(leases.clone())));
        let keeper = Keeper { ownership: ownership.clone(), leases: leases.clone(), config: config.clone() };
        keeper.tick()?;
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("mneme-leases".into())
            .spawn(move || {
                let (lock, cvar) = &*stopped;
                let mut stop = lock.lock().unwrap();
                loop {
                    stop = cvar.wait_timeout(stop, keeper.config.tick()).unwrap().0;
                    if *stop {
                        return;
                    }
                    if let Err(e) = keeper.tick() {
                        tracing::warn!("partition leases not renewed: {e}");
                    }
                }
            })
            .expect("spawn the lease keeper");
        Ok(Cluster { ownership, leases, config, stop, thread: Some(thread) })
    }

    pub fn ownership(&self) -> &Arc<Ownership> {
        &self.ownership
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    fn stop_thread(&mut self) {
        *self.stop.0.lock().unwrap() = true;
        self.stop.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Stop renewing and give every partition up at once (a clean shutdown, after
    /// the last write): the other hosts take them at their next tick.
    pub fn leave(mut self) {
        self.leave_now();
    }

    fn leave_now(&mut self) {
        if self.thread.is_none() {
            return;
        }
        self.stop_thread();
        let held: Vec<u32> = (0..PARTITIONS).filter(|&p| self.ownership.recorded(p) != 0).collect();
        for &p in &held {
            self.ownership.revoke(p);
        }
        match self.leases.leave(&self.config.node, &held) {
            Ok(()) => tracing::info!(partitions = held.len(), "left the cluster: partitions released"),
            Err(e) => tracing::warn!("leaving the cluster: {e}; the partitions go to others when their leases end"),
        }
    }

    /// Stop renewing without releasing anything, as a crash would: the leases run
    /// out by themselves. For tests of failover.
    pub fn halt(mut self) {
        self.stop_thread();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.leave_now();
    }
}

impl Keeper {
    fn tick(&self) -> JournalResult<()> {
        let config = &self.config;
        let node = config.node.as_str();
        let sent = Instant::now();
        let until = sent + config.lease - config.margin();
        self.leases.heartbeat(node, &config.advertise)?;
        let held = self.leases.renew(node, config.lease)?;
        for p in 0..PARTITIONS {
            let recorded = self.ownership.recorded(p);
            if recorded != 0 && !held.iter().any(|l| l.partition == p && l.epoch == recorded) {
                self.ownership.revoke(p);
                tracing::warn!(partition = p, epoch = recorded, "partition lost: another host holds it now");
            }
        }
        for lease in &held {
            self.ownership.grant(*lease, until);
        }
        let live = self.leases.live_nodes(config.lease)?.len().max(1);
        let fair = (PARTITIONS as usize).div_ceil(live);
        if held.len() < fair {
            let taken = self.leases.acquire(node, fair - held.len(), config.lease)?;
            for lease in &taken {
                self.ownership.grant(*lease, until);
            }
            if !taken.is_empty() {
                let partitions: Vec<u32> = taken.iter().map(|l| l.partition).collect();
                tracing::info!(?partitions, live, "partitions taken");
            }
        } else if held.len() > fair {
            let extra: Vec<u32> = held.iter().rev().take(held.len() - fair).map(|l| l.partition).collect();
            for &p in &extra {
                self.ownership.revoke(p);
            }
            self.leases.release(node, &extra)?;
            tracing::info!(partitions = ?extra, live, "partitions given up to even the load");
        }
        self.ownership.set_holders(self.leases.holders()?);
        Ok(())
    }
}
