//! Time as a dependency: the real clock in production, a hand-moved one in tests, so
//! expiry is tested without sleeping.

use std::sync::Mutex;

use chrono::{DateTime, Duration, SubsecRound, Utc};

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    /// Now, in UTC, truncated to microseconds (what the databases store).
    fn now(&self) -> DateTime<Utc>;

    /// Completes when the clock is moved by hand ([`ManualClock::advance`]), so what
    /// sleeps until a time on this clock looks again; never for the system clock.
    fn moved(&self) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(std::future::pending())
    }
}

/// The system clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now().trunc_subsecs(6)
    }
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock(Mutex<DateTime<Utc>>, tokio::sync::Notify);

impl ManualClock {
    /// Starts at the current real time.
    pub fn new() -> Self {
        Self(
            Mutex::new(Utc::now().trunc_subsecs(6)),
            tokio::sync::Notify::new(),
        )
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let mut t = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *t += by;
        drop(t);
        self.1.notify_waiters();
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn moved(&self) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        // A `Notified` hears `notify_waiters` calls made after it was created, polled or
        // not: create it before reading the time it guards.
        Box::pin(self.1.notified())
    }
}
