//! Rate limits (GCRA: a steady rate with a burst), shared by every replica through Redis
//! when `REDIS_URL` is set, kept in process otherwise. Chosen once at start-up; while
//! Redis does not answer, each process falls back to its own buckets (requests keep
//! working; the limit is then per replica until Redis is back).
//!
//! GCRA keeps one number per key, the theoretical arrival time (TAT): taking `n` units at
//! `now` is allowed when `max(TAT, now) + n·T - now <= burst·T`, where `T = 60 s / rate`
//! is the emission interval, and moves the TAT on by `n·T`. Requests take one unit; a
//! GraphQL operation takes its query cost (and gives back what it did not use). In Redis
//! this is one Lua script on the server's clock, so replicas with skewed clocks share one
//! budget. Times are microseconds, so budgets of millions of units a minute keep their
//! precision.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The limits in force for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Units per minute in the long run (0: no limit).
    pub per_minute: u64,
    /// Units allowed at once above the steady rate (the bucket's size).
    pub burst: u64,
}

/// Highest rate a quota can express (an interval of one microsecond).
const MAX_PER_MINUTE: u64 = 60_000_000;

impl Quota {
    /// `per_minute` with a burst of a sixth of it (ten seconds' worth, at least 1).
    pub fn per_minute(per_minute: u64) -> Self {
        Self {
            per_minute,
            burst: (per_minute / 6).max(1),
        }
    }

    /// A budget of `per_minute` units that may all be spent at once and refills
    /// continuously over the minute.
    pub fn budget(per_minute: u64) -> Self {
        Self {
            per_minute,
            burst: per_minute,
        }
    }

    /// Whether the quota limits anything.
    pub fn is_limited(self) -> bool {
        self.per_minute > 0
    }

    fn interval_us(self) -> u64 {
        60_000_000 / self.per_minute.clamp(1, MAX_PER_MINUTE)
    }

    /// The bucket: `burst` intervals.
    fn capacity_us(self) -> u64 {
        self.interval_us().saturating_mul(self.burst.max(1))
    }

    /// `RateLimit-Policy` item: `<per minute>;w=60;burst=<burst>`.
    pub fn policy(self) -> String {
        format!("{};w=60;burst={}", self.per_minute, self.burst)
    }
}

/// Units taken: what is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowed {
    /// Units that could still be taken at once.
    pub remaining: u64,
    /// Until the bucket is full again.
    pub reset: Duration,
}

impl Allowed {
    /// What a quota of 0 (no limit) leaves.
    pub const UNLIMITED: Self = Self {
        remaining: u64::MAX,
        reset: Duration::ZERO,
    };
}

/// Units refused: when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// Wait at least this long (`Duration::MAX` when the units never fit: more than
    /// the whole bucket).
    pub retry_after: Duration,
}

impl Limited {
    /// Whole seconds to wait, at least 1.
    pub fn retry_after_secs(self) -> u64 {
        u64::try_from(self.retry_after.as_millis().div_ceil(1000).max(1)).unwrap_or(u64::MAX)
    }
}

/// The rate limiter of this process.
pub struct RateLimiter {
    quota: Quota,
    local: Mutex<Local>,
    redis: Option<Shared>,
}

struct Shared {
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
    prefix: String,
    script: redis::Script,
}

#[derive(Default)]
struct Local {
    tat: HashMap<String, Instant>,
    checks: u64,
}

/// GCRA on the Redis server's clock, in microseconds. ARGV: interval, capacity, units
/// (negative: give back), force (1: take even past the capacity, a debt later requests
/// wait out). Returns `{1, remaining, reset}` when taken, `{0, wait}` when refused.
const GCRA_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new = tat + n * interval
if new < now then new = now end
if n > 0 and ARGV[4] ~= '1' and new - now > cap then return {0, new - now - cap} end
if new - now > cap then
  redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.floor((new - now) / 1000) + 1000)
  return {1, 0, new - now}
end
redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.floor((new - now) / 1000) + 1000)
return {1, math.floor((cap - (new - now)) / interval), new - now}
";

impl RateLimiter {
    /// A limiter whose default quota (per principal) is `quota`, shared through Redis at
    /// `redis_url` when given.
    pub fn new(
        quota: Quota,
        redis_url: Option<&str>,
        redis_ca: Option<&[u8]>,
        key_prefix: &str,
    ) -> anyhow::Result<Self> {
        let redis = match redis_url {
            None => None,
            Some(url) => Some(Shared {
                client: crate::events::redis::client(url, redis_ca)?,
                conn: tokio::sync::Mutex::new(None),
                prefix: format!("{key_prefix}:rl:"),
                script: redis::Script::new(GCRA_LUA),
            }),
        };
        Ok(Self {
            quota,
            local: Mutex::new(Local::default()),
            redis,
        })
    }

    /// The per-principal request quota (`AGENTPLANE_RATE_LIMIT_PER_MINUTE`).
    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// Counts one request of `key` (e.g. a principal) against the per-principal quota.
    pub async fn check(&self, key: &str) -> Result<Allowed, Limited> {
        self.take(key, self.quota, 1).await
    }

    /// Takes `units` of `key`'s bucket under `quota`; `Err` when they do not fit now.
    /// A quota of 0 a minute takes nothing and always allows.
    pub async fn take(&self, key: &str, quota: Quota, units: u64) -> Result<Allowed, Limited> {
        if !quota.is_limited() {
            return Ok(Allowed::UNLIMITED);
        }
        if units > quota.burst {
            return Err(Limited {
                retry_after: Duration::MAX,
            });
        }
        self.run(key, quota, i64::try_from(units).unwrap_or(i64::MAX), false)
            .await
    }

    /// Takes `units` of `key`'s bucket whether or not they fit (work already done that
    /// cost more than was charged): past the bucket's size it is a debt that later takes
    /// wait out. Returns what is left.
    pub async fn take_anyway(&self, key: &str, quota: Quota, units: u64) -> Allowed {
        if !quota.is_limited() {
            return Allowed::UNLIMITED;
        }
        // Bounded so one answer cannot put a key in debt for more than ten buckets.
        let units = units.min(quota.burst.saturating_mul(10));
        let n = i64::try_from(units).unwrap_or(i64::MAX);
        self.run(key, quota, n, true).await.unwrap_or(Allowed {
            remaining: 0,
            reset: Duration::ZERO,
        })
    }

    /// Gives `units` back to `key`'s bucket (a charge that turned out too high); returns
    /// what is left.
    pub async fn give_back(&self, key: &str, quota: Quota, units: u64) -> Allowed {
        if !quota.is_limited() {
            return Allowed::UNLIMITED;
        }
        // Zero units reads what is left.
        let n = -i64::try_from(units).unwrap_or(i64::MAX);
        match self.run(key, quota, n, false).await {
            Ok(a) => a,
            // Giving back is never refused.
            Err(_) => Allowed {
                remaining: 0,
                reset: Duration::ZERO,
            },
        }
    }

    async fn run(&self, key: &str, quota: Quota, n: i64, force: bool) -> Result<Allowed, Limited> {
        if let Some(shared) = &self.redis {
            match Self::run_redis(shared, key, quota, n, force).await {
                Ok(r) => return r,
                // Redis does not answer: this process's buckets stand in.
                Err(e) => tracing::debug!(error = %e, "rate limit falls back to this process"),
            }
        }
        self.run_local(key, quota, n, force, Instant::now())
    }

    async fn run_redis(
        shared: &Shared,
        key: &str,
        quota: Quota,
        n: i64,
        force: bool,
    ) -> redis::RedisResult<Result<Allowed, Limited>> {
        let mut guard = shared.conn.lock().await;
        if guard.is_none() {
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(Duration::from_millis(300)))
                .set_response_timeout(Some(Duration::from_millis(300)));
            *guard = Some(
                shared
                    .client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?,
            );
        }
        let Some(conn) = guard.as_mut() else {
            unreachable!("connected above")
        };
        let mut conn = conn.clone();
        drop(guard);
        let answer: redis::RedisResult<Vec<i64>> = shared
            .script
            .key(format!("{}{key}", shared.prefix))
            .arg(quota.interval_us())
            .arg(quota.capacity_us())
            .arg(n)
            .arg(if force { 1 } else { 0 })
            .invoke_async(&mut conn)
            .await;
        let us =
            |v: Option<&i64>| Duration::from_micros(u64::try_from(*v.unwrap_or(&0)).unwrap_or(0));
        match answer {
            Ok(v) if v.first() == Some(&1) => Ok(Ok(Allowed {
                remaining: u64::try_from(*v.get(1).unwrap_or(&0)).unwrap_or(0),
                reset: us(v.get(2)),
            })),
            Ok(v) => Ok(Err(Limited {
                retry_after: us(v.get(1)),
            })),
            Err(e) => {
                *shared.conn.lock().await = None;
                Err(e)
            }
        }
    }

    fn run_local(
        &self,
        key: &str,
        quota: Quota,
        n: i64,
        force: bool,
        now: Instant,
    ) -> Result<Allowed, Limited> {
        let interval = quota.interval_us();
        let cap = quota.capacity_us();
        let mut local = self
            .local
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Forget idle keys now and then, so memory follows the active principals.
        local.checks += 1;
        if local.checks % 4096 == 0 {
            local.tat.retain(|_, tat| *tat > now);
        }
        let tat = local.tat.get(key).copied().unwrap_or(now).max(now);
        let ahead = u64::try_from((tat - now).as_micros()).unwrap_or(u64::MAX);
        let step = interval.saturating_mul(n.unsigned_abs());
        let new = if n >= 0 {
            ahead.saturating_add(step)
        } else {
            ahead.saturating_sub(step)
        };
        if n > 0 && !force && new > cap {
            return Err(Limited {
                retry_after: Duration::from_micros(new - cap),
            });
        }
        local
            .tat
            .insert(key.to_owned(), now + Duration::from_micros(new));
        Ok(Allowed {
            remaining: (cap - new.min(cap)) / interval.max(1),
            reset: Duration::from_micros(new),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter() -> RateLimiter {
        RateLimiter::new(Quota::per_minute(60), None, None, "t").expect("limiter")
    }

    #[test]
    fn a_burst_then_the_steady_rate() {
        let l = limiter();
        let q = Quota {
            per_minute: 60,
            burst: 3,
        };
        let t0 = Instant::now();
        let remaining: Vec<u64> = (0..3)
            .map(|_| {
                l.run_local("k", q, 1, false, t0)
                    .expect("within the burst")
                    .remaining
            })
            .collect();
        assert_eq!(remaining, [2, 1, 0]);
        let refused = l
            .run_local("k", q, 1, false, t0)
            .expect_err("over the burst");
        assert!(refused.retry_after <= Duration::from_secs(1), "{refused:?}");
        // Another key has its own budget.
        assert!(l.run_local("other", q, 1, false, t0).is_ok());
        // One interval later, one more request fits.
        let t1 = t0 + Duration::from_millis(1000);
        assert!(l.run_local("k", q, 1, false, t1).is_ok());
        assert!(l.run_local("k", q, 1, false, t1).is_err());
    }

    #[test]
    fn a_budget_is_spent_in_units_and_given_back() {
        let l = limiter();
        let q = Quota::budget(1_000);
        let t0 = Instant::now();
        let a = l.run_local("c", q, 600, false, t0).expect("fits");
        assert_eq!(a.remaining, 400);
        assert!(l.run_local("c", q, 500, false, t0).is_err(), "400 left");
        let a = l.run_local("c", q, -300, false, t0).expect("giving back");
        assert_eq!(a.remaining, 700);
        assert!(l.run_local("c", q, 700, false, t0).is_ok());
        // Giving back never goes below an empty bucket.
        let a = l.run_local("c", q, -5_000, false, t0).expect("giving back");
        assert_eq!(a.remaining, 1_000);
        // Work that cost more than its charge: a debt later takes wait out.
        let a = l.run_local("c", q, 1_500, true, t0).expect("taken anyway");
        assert_eq!(a.remaining, 0);
        let refused = l.run_local("c", q, 1, false, t0).expect_err("in debt");
        assert!(
            refused.retry_after >= Duration::from_secs(29),
            "{refused:?}"
        );
    }
}
