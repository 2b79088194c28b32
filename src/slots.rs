//! Counted slots per key (client address, principal): how many of something one key holds
//! at once, released when the slot is dropped; and [`Lane`], a fixed set of threads for
//! blocking work with a bounded queue.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

/// Live counts per key. Cheap to clone (shared).
pub struct KeyedSlots<K: Eq + Hash + Clone> {
    held: Arc<Mutex<HashMap<K, usize>>>,
}

impl<K: Eq + Hash + Clone> Clone for KeyedSlots<K> {
    fn clone(&self) -> Self {
        Self {
            held: self.held.clone(),
        }
    }
}

impl<K: Eq + Hash + Clone> Default for KeyedSlots<K> {
    fn default() -> Self {
        Self {
            held: Arc::default(),
        }
    }
}

/// One slot of a key; dropping it gives it back.
pub struct Slot<K: Eq + Hash + Clone> {
    held: Arc<Mutex<HashMap<K, usize>>>,
    key: K,
}

impl<K: Eq + Hash + Clone> KeyedSlots<K> {
    /// Takes a slot of `key` when it holds fewer than `max`.
    pub fn try_take(&self, key: &K, max: usize) -> Option<Slot<K>> {
        let mut m = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let n = m.entry(key.clone()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot {
            held: self.held.clone(),
            key: key.clone(),
        })
    }

    /// Slots `key` holds now.
    pub fn held(&self, key: &K) -> usize {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .copied()
            .unwrap_or(0)
    }
}

impl<K: Eq + Hash + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut m = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = m.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// Runs blocking or CPU-heavy work (password hashing, template rendering) on `threads`
/// dedicated threads, never on a runtime worker, with at most `queue` more jobs waiting;
/// beyond that [`Lane::run`] refuses at once instead of piling up threads and memory.
pub struct Lane {
    jobs: Mutex<std::sync::mpsc::Sender<Job>>,
    admitted: Arc<tokio::sync::Semaphore>,
}

/// [`Lane::run`] refused the job: every thread is busy and the queue is full.
#[derive(Debug)]
pub struct Busy;

impl Lane {
    /// Starts `threads` threads named `<name>-<n>` (they end when the lane is dropped).
    pub fn new(name: &str, threads: usize, queue: usize) -> Self {
        let threads = threads.max(1);
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    loop {
                        let job = match rx.lock() {
                            Ok(r) => r.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return, // the lane was dropped
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, lane = name, "starting a worker thread failed");
            }
        }
        Self {
            jobs: Mutex::new(tx),
            admitted: Arc::new(tokio::sync::Semaphore::new(threads + queue)),
        }
    }

    /// Runs `work` on one of the lane's threads and waits for its result.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Busy> {
        let Ok(admitted) = self.admitted.clone().try_acquire_owned() else {
            return Err(Busy);
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(work());
            drop(admitted);
        });
        self.jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .send(job)
            .map_err(|_| Busy)?;
        rx.await.map_err(|_| Busy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_per_key_and_given_back_on_drop() {
        let s = KeyedSlots::<u8>::default();
        let a1 = s.try_take(&1, 2).expect("first");
        let _a2 = s.try_take(&1, 2).expect("second");
        assert!(s.try_take(&1, 2).is_none(), "a third is refused");
        let _b = s.try_take(&2, 2).expect("another key has its own count");
        drop(a1);
        assert_eq!(s.held(&1), 1);
        assert!(s.try_take(&1, 2).is_some());
    }
}

/// Open websockets per client address and running websocket operations per principal,
/// process-wide (the transport takes and releases them).
#[derive(Default)]
pub struct SocketSlots {
    /// Open sockets per client address.
    pub addresses: KeyedSlots<std::net::IpAddr>,
    /// Running operations per user or API key.
    pub principals: KeyedSlots<String>,
}
