//! Verified-token cache: a client that sends the same token again pays the signature check
//! (or the introspection round trip) once.
//!
//! Entries are keyed by the SHA-256 of the token, never the token itself, and live until the
//! earliest of the token's own expiry and the configured maximum age. The cache is bounded in
//! entries; the least useful entries are evicted first. Expiry is checked again on every hit,
//! so an entry is never used past `exp` even if eviction lags.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use moka::sync::Cache;

use super::Identity;

/// A token's cache key: the SHA-256 of its bytes.
pub type TokenDigest = [u8; 32];

/// Hashes a token for use as a cache key or in the audit trail.
pub fn digest(token: &str) -> TokenDigest {
    let hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(hash.as_ref());
    out
}

/// A short, stable label for a token that has no `jti`: `sha256:` and the first 16 bytes of
/// its digest in hex. Identifies the token in the audit trail without revealing it.
pub fn digest_label(digest: &TokenDigest) -> String {
    let mut label = String::with_capacity(39);
    label.push_str("sha256:");
    for byte in &digest[..16] {
        label.push_str(&format!("{byte:02x}"));
    }
    label
}

#[derive(Clone)]
struct Entry {
    identity: Arc<Identity>,
    /// When the entry stops being usable (monotonic clock).
    until: Instant,
}

/// Bounded cache of verified identities.
pub struct VerifiedTokens {
    entries: Cache<TokenDigest, Entry>,
    max_age: Duration,
}

impl std::fmt::Debug for VerifiedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedTokens")
            .field("entries", &self.entries.entry_count())
            .field("max_age", &self.max_age)
            .finish()
    }
}

struct UntilExpiry;

impl moka::Expiry<TokenDigest, Entry> for UntilExpiry {
    fn expire_after_create(
        &self,
        _key: &TokenDigest,
        value: &Entry,
        created_at: Instant,
    ) -> Option<Duration> {
        Some(value.until.saturating_duration_since(created_at))
    }
}

impl VerifiedTokens {
    /// A cache of at most `capacity` tokens, each kept at most `max_age`.
    pub fn new(capacity: u64, max_age: Duration) -> Self {
        Self {
            entries: Cache::builder()
                .max_capacity(capacity)
                .expire_after(UntilExpiry)
                .build(),
            max_age,
        }
    }

    /// The identity verified earlier for this token, if still usable.
    pub fn get(&self, key: &TokenDigest) -> Option<Arc<Identity>> {
        let entry = self.entries.get(key)?;
        if Instant::now() >= entry.until {
            self.entries.invalidate(key);
            return None;
        }
        Some(entry.identity)
    }

    /// Remembers a verified identity until `expires_at` (Unix seconds) or the maximum age.
    /// Nothing is stored when `max_age` is zero or the token is about to expire.
    pub fn insert(&self, key: TokenDigest, identity: Arc<Identity>, expires_at: Option<f64>) {
        let lifetime = expires_at
            .map(remaining)
            .unwrap_or(self.max_age)
            .min(self.max_age);
        if lifetime.is_zero() {
            return;
        }
        let until = Instant::now() + lifetime;
        self.entries.insert(key, Entry { identity, until });
    }

    /// Number of cached tokens (approximate while writes are pending).
    pub fn len(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Time from now until the Unix time `at`, zero when it has passed.
fn remaining(at: f64) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    Duration::try_from_secs_f64(at - now).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(subject: &str) -> Arc<Identity> {
        Arc::new(Identity {
            issuer: "https://idp.test".into(),
            subject: Some(subject.into()),
            ..Identity::default()
        })
    }

    fn unix_now() -> f64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    }

    #[test]
    fn digests_differ_per_token_and_hide_it() {
        let a = digest("token-a");
        assert_ne!(a, digest("token-b"));
        assert_eq!(a, digest("token-a"));
    }

    #[test]
    fn a_cached_token_is_found_until_it_expires() {
        let cache = VerifiedTokens::new(10, Duration::from_secs(300));
        let key = digest("t");
        cache.insert(key, identity("u"), Some(unix_now() + 60.0));
        assert_eq!(cache.get(&key).unwrap().subject.as_deref(), Some("u"));
        assert!(cache.get(&digest("other")).is_none());
    }

    #[test]
    fn expired_or_zero_age_tokens_are_not_kept() {
        let cache = VerifiedTokens::new(10, Duration::from_secs(300));
        cache.insert(digest("old"), identity("u"), Some(unix_now() - 1.0));
        assert!(cache.get(&digest("old")).is_none());
        let off = VerifiedTokens::new(10, Duration::ZERO);
        off.insert(digest("t"), identity("u"), Some(unix_now() + 60.0));
        assert!(off.get(&digest("t")).is_none());
    }

    #[test]
    fn an_entry_is_never_used_past_its_expiry() {
        let cache = VerifiedTokens::new(10, Duration::from_secs(300));
        let key = digest("short");
        cache.insert(key, identity("u"), Some(unix_now() + 0.05));
        std::thread::sleep(Duration::from_millis(80));
        assert!(cache.get(&key).is_none());
    }

    #[test]
    fn the_cache_stays_bounded() {
        let cache = VerifiedTokens::new(100, Duration::from_secs(300));
        for n in 0..1_000 {
            let token = format!("token-{n}");
            cache.insert(digest(&token), identity("u"), Some(unix_now() + 60.0));
        }
        assert!(cache.len() <= 100, "{} entries", cache.len());
    }
}
