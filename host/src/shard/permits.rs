//! A bound on how many entities recover at the same time (Akka's
//! `max-concurrent-recoveries`): a counting semaphore for the shard threads, which
//! block on it.

use std::sync::{Condvar, Mutex};

pub struct RecoveryPermits {
    free: Mutex<usize>,
    cv: Condvar,
}

impl RecoveryPermits {
    pub fn new(n: usize) -> Self {
        RecoveryPermits { free: Mutex::new(n.max(1)), cv: Condvar::new() }
    }

    /// Wait for a permit; it is returned when the guard is dropped.
    pub fn acquire(&self) -> Permit<'_> {
        let mut free = self.free.lock().unwrap();
        while *free == 0 {
            free = self.cv.wait(free).unwrap();
        }
        *free -= 1;
        Permit(self)
    }
}

pub struct Permit<'a>(&'a RecoveryPermits);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap() += 1;
        self.0.cv.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn permits_bound_concurrency() {
        let permits = Arc::new(RecoveryPermits::new(2));
        let (now, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (permits, now, peak) = (permits.clone(), now.clone(), peak.clone());
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        let _permit = permits.acquire();
                        let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(n, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_micros(200));
                        now.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(peak.load(Ordering::SeqCst), 2, "at most 2 holders, and the bound is reached");
    }
}
