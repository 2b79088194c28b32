//! Request rate limits per principal (GCRA: a steady rate with a burst), shared by every
//! replica through Redis when `REDIS_URL` is set, kept in process otherwise. Chosen once
//! at start-up; while Redis does not answer, each process falls back to its own buckets
//! (requests keep working; the limit is then per replica until Redis is back).
//!
//! GCRA keeps one number per key, the theoretical arrival time (TAT): a request at `now`
//! is allowed when `max(TAT, now) - now <= tau` (the burst allowance) and moves the TAT on
//! by one emission interval `T = period / rate`. In Redis this is one Lua script on the
//! server's clock, so replicas with skewed clocks share one budget.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The limits in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Requests per minute in the long run (0: no limit).
    pub per_minute: u32,
    /// Requests allowed at once above the steady rate.
    pub burst: u32,
}

impl Quota {
    fn interval_ms(self) -> u64 {
        60_000 / u64::from(self.per_minute.max(1))
    }

    fn tau_ms(self) -> u64 {
        self.interval_ms() * u64::from(self.burst.saturating_sub(1))
    }
}

/// A refused request: when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// Wait at least this long.
    pub retry_after: Duration,
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

/// GCRA on the Redis server's clock. Returns -1 when allowed, else the milliseconds to
/// wait.
const GCRA_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if tat - now > tau then return tat - now - tau end
local new = tat + interval
redis.call('SET', KEYS[1], new, 'PX', new - now + 1000)
return -1
";

impl RateLimiter {
    /// A limiter with `quota`, shared through Redis at `redis_url` when given.
    pub fn new(quota: Quota, redis_url: Option<&str>, key_prefix: &str) -> anyhow::Result<Self> {
        let redis = match redis_url {
            None => None,
            Some(url) => Some(Shared {
                client: redis::Client::open(url)
                    .map_err(|e| anyhow::anyhow!("REDIS_URL is not usable: {e}"))?,
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

    /// The limits in force.
    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// Counts one request of `key` (e.g. a principal); `Err` when it is over the limit.
    pub async fn check(&self, key: &str) -> Result<(), Limited> {
        if self.quota.per_minute == 0 {
            return Ok(());
        }
        if let Some(shared) = &self.redis {
            match self.check_redis(shared, key).await {
                Ok(r) => return r,
                // Redis does not answer: this process's buckets stand in.
                Err(e) => tracing::debug!(error = %e, "rate limit falls back to this process"),
            }
        }
        self.check_local(key, Instant::now())
    }

    async fn check_redis(
        &self,
        shared: &Shared,
        key: &str,
    ) -> redis::RedisResult<Result<(), Limited>> {
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
        let wait: redis::RedisResult<i64> = shared
            .script
            .key(format!("{}{key}", shared.prefix))
            .arg(self.quota.interval_ms())
            .arg(self.quota.tau_ms())
            .invoke_async(&mut conn)
            .await;
        match wait {
            Ok(ms) if ms < 0 => Ok(Ok(())),
            Ok(ms) => Ok(Err(Limited {
                retry_after: Duration::from_millis(u64::try_from(ms).unwrap_or(0)),
            })),
            Err(e) => {
                *shared.conn.lock().await = None;
                Err(e)
            }
        }
    }

    fn check_local(&self, key: &str, now: Instant) -> Result<(), Limited> {
        let interval = Duration::from_millis(self.quota.interval_ms());
        let tau = Duration::from_millis(self.quota.tau_ms());
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
        let ahead = tat - now;
        if ahead > tau {
            return Err(Limited {
                retry_after: ahead - tau,
            });
        }
        local.tat.insert(key.to_owned(), tat + interval);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_steady_rate() {
        let l = RateLimiter::new(
            Quota {
                per_minute: 60,
                burst: 3,
            },
            None,
            "t",
        )
        .expect("limiter");
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check_local("k", t0).is_ok());
        }
        let refused = l.check_local("k", t0).expect_err("over the burst");
        assert!(refused.retry_after <= Duration::from_secs(1), "{refused:?}");
        // Another key has its own budget.
        assert!(l.check_local("other", t0).is_ok());
        // One interval later, one more request fits.
        let t1 = t0 + Duration::from_millis(1000);
        assert!(l.check_local("k", t1).is_ok());
        assert!(l.check_local("k", t1).is_err());
    }
}
