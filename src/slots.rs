//! Counted slots per key (client address, principal): how many of something one key holds
//! at once, released when the slot is dropped.

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
