//! Rate limits kept in Redis, so that every replica enforces one limit.
//!
//! Each check is one atomic Lua script on one key (so it works with Redis Cluster's key
//! hashing): GCRA on the key's theoretical arrival time, with the time taken from the Redis
//! server, so replicas' clocks do not matter. The key expires when its allowance is whole
//! again. Keys are a SHA-256 of the rule's key fields: no client id, subject or patient is
//! stored in Redis in the clear.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aws_lc_rs::digest;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::Mutex;

use crate::config::RedisStore;

/// GCRA in one round trip. KEYS[1]: the key. ARGV: emission interval (µs), tolerance
/// (interval × burst, µs), cost (units). Returns {allowed, remaining, retry_after_µs, full_in_µs}.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + interval * cost
if new_tat - now > tolerance then
  return {0, math.floor((tolerance - (tat - now)) / interval), new_tat - tolerance - now, tat - now}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, math.floor((tolerance - (new_tat - now)) / interval), 0, new_tat - now}
"#;

/// The answer of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub allowed: bool,
    pub remaining: u32,
    pub retry_after: Duration,
    pub full_in: Duration,
}

/// The Redis side of the limiter.
pub struct SharedStore {
    settings: RedisStore,
    client: redis::Client,
    connection: Mutex<Option<ConnectionManager>>,
    script: redis::Script,
    /// Whether the last check reached Redis; changes are logged once each.
    reachable: AtomicBool,
}

impl std::fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedStore")
            .field("reachable", &self.reachable.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Why a Redis store cannot be set up.
#[derive(Debug, thiserror::Error)]
#[error("rate_limits.redis.url: {0}")]
pub struct SharedSetupError(String);

impl SharedStore {
    pub fn new(settings: &RedisStore) -> Result<Self, SharedSetupError> {
        let client = redis::Client::open(settings.url.as_str())
            .map_err(|e| SharedSetupError(e.to_string()))?;
        Ok(Self {
            settings: settings.clone(),
            client,
            connection: Mutex::new(None),
            script: redis::Script::new(GCRA),
            reachable: AtomicBool::new(true),
        })
    }

    /// Did the latest check reach Redis?
    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// Asks Redis now (`PING`), and records the answer like a check's.
    pub async fn probe(&self) -> bool {
        let ping = async {
            let mut connection = self.connection().await?;
            redis::cmd("PING")
                .query_async::<String>(&mut connection)
                .await
                .map_err(|e| e.to_string())
        };
        let up = tokio::time::timeout(self.settings.timeout, ping)
            .await
            .is_ok_and(|answer| answer.is_ok());
        let was = self.reachable.swap(up, Ordering::Relaxed);
        if was != up {
            if up {
                tracing::info!(store = "redis", "rate-limit store reachable again");
            } else {
                tracing::warn!(store = "redis", failure_mode = ?self.settings.failure_mode, "rate-limit store unreachable");
            }
        }
        up
    }

    /// Charges `cost` units to `key` under a quota of one unit per `interval`, `burst` at
    /// most; `None` when Redis cannot be asked.
    pub async fn check(
        &self,
        rule: &str,
        key: &str,
        interval: Duration,
        burst: u32,
        cost: u32,
    ) -> Option<Answer> {
        let answer = tokio::time::timeout(
            self.settings.timeout,
            self.ask(rule, key, interval, burst, cost),
        )
        .await
        .unwrap_or_else(|_| Err("timed out".to_owned()));
        match answer {
            Ok(answer) => {
                if !self.reachable.swap(true, Ordering::Relaxed) {
                    tracing::info!(store = "redis", "rate-limit store reachable again");
                }
                Some(answer)
            }
            Err(error) => {
                if self.reachable.swap(false, Ordering::Relaxed) {
                    tracing::warn!(store = "redis", %error, failure_mode = ?self.settings.failure_mode, "rate-limit store unreachable");
                }
                None
            }
        }
    }

    async fn ask(
        &self,
        rule: &str,
        key: &str,
        interval: Duration,
        burst: u32,
        cost: u32,
    ) -> Result<Answer, String> {
        let mut connection = self.connection().await?;
        let interval_us = (interval.as_micros() as u64).max(1);
        let tolerance_us = interval_us.saturating_mul(u64::from(burst));
        let reply: Vec<i64> = self
            .script
            .key(self.redis_key(rule, key))
            .arg(interval_us)
            .arg(tolerance_us)
            .arg(cost)
            .invoke_async(&mut connection)
            .await
            .map_err(|e| e.to_string())?;
        let [allowed, remaining, retry_us, full_us] = reply[..] else {
            return Err(format!("unexpected script reply {reply:?}"));
        };
        let micros = |n: i64| Duration::from_micros(n.max(0) as u64);
        Ok(Answer {
            allowed: allowed == 1,
            remaining: remaining.clamp(0, i64::from(u32::MAX)) as u32,
            retry_after: micros(retry_us),
            full_in: micros(full_us),
        })
    }

    /// The connection, made on first use (and again after it could not be made): the
    /// manager reconnects by itself once it exists.
    async fn connection(&self) -> Result<ConnectionManager, String> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.settings.timeout))
            .set_response_timeout(Some(self.settings.timeout))
            .set_number_of_retries(1);
        let connection = ConnectionManager::new_with_config(self.client.clone(), config)
            .await
            .map_err(|e| e.to_string())?;
        *slot = Some(connection.clone());
        Ok(connection)
    }

    fn redis_key(&self, rule: &str, key: &str) -> String {
        let digest = digest::digest(&digest::SHA256, key.as_bytes());
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        format!("{}:rl:{rule}:{hex}", self.settings.key_prefix)
    }
}
