//! Verified-token cache: a client that sends the same token again pays the signature check
//! (or the introspection round trip) once.
//!
//! Entries are keyed by the SHA-256 of the token, never the token itself, and live until the
//! earliest of the token's own expiry and the configured maximum age. The cache is bounded in
//! entries; the least useful entries are evicted first. Expiry is checked again on every hit,
//! so an entry is never used past `exp` even if eviction lags.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fhirgate_policy::Grant;
use quick_cache::sync::Cache;

use super::{Caller, Identity};

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
///
/// An entry costs about 200 bytes beside its `jti`: the tokens of one caller (a session's
/// refreshes, an app's users with the same scopes and patient) share one [`Caller`] and one
/// parsed grant, kept by [`Callers`].
pub struct VerifiedTokens {
    entries: Cache<TokenDigest, Entry>,
    callers: Callers,
    max_age: Duration,
}

impl std::fmt::Debug for VerifiedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedTokens")
            .field("entries", &self.entries.len())
            .field("max_age", &self.max_age)
            .finish()
    }
}

impl VerifiedTokens {
    /// A cache of at most `capacity` tokens, each kept at most `max_age`.
    pub fn new(capacity: u64, max_age: Duration) -> Self {
        let capacity = usize::try_from(capacity).unwrap_or(usize::MAX).max(1);
        Self {
            entries: Cache::new(capacity),
            callers: Callers::default(),
            max_age,
        }
    }

    /// The identity verified earlier for this token, if still usable.
    pub fn get(&self, key: &TokenDigest) -> Option<Arc<Identity>> {
        let entry = self.entries.get(key)?;
        if Instant::now() >= entry.until {
            self.entries.remove(key);
            return None;
        }
        Some(entry.identity)
    }

    /// Remembers a verified identity until `expires_at` (Unix seconds) or the maximum age,
    /// and returns it, its caller shared with the other cached tokens of that caller.
    /// Nothing is stored when `max_age` is zero or the token is about to expire.
    pub fn insert(&self, key: TokenDigest, identity: Identity) -> Arc<Identity> {
        let lifetime = identity
            .expires_at
            .map(remaining)
            .unwrap_or(self.max_age)
            .min(self.max_age);
        if lifetime.is_zero() {
            return Arc::new(identity);
        }
        let identity = Arc::new(self.callers.share(identity));
        let until = Instant::now() + lifetime;
        self.entries.insert(
            key,
            Entry {
                identity: identity.clone(),
                until,
            },
        );
        identity
    }

    /// Number of cached tokens.
    pub fn len(&self) -> u64 {
        self.entries.len() as u64
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The distinct callers of the cached tokens, each with its parsed grant.
///
/// A caller no cached token (or request in flight) holds any more is dropped once the table
/// has doubled since it was last swept, so the table stays within about twice the number of
/// callers in use.
#[derive(Default)]
struct Callers {
    table: Mutex<CallerTable>,
}

#[derive(Default)]
struct CallerTable {
    shared: HashMap<Arc<Caller>, Arc<Grant>>,
    sweep_at: usize,
}

/// The table is not swept below this many callers.
const CALLERS_SWEPT_FROM: usize = 1024;

impl Callers {
    /// `identity` with the caller and grant of an equal caller seen before, if any.
    fn share(&self, identity: Identity) -> Identity {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((caller, grant)) = table.shared.get_key_value(&*identity.caller) {
            return Identity {
                caller: caller.clone(),
                grant: grant.clone(),
                ..identity
            };
        }
        table
            .shared
            .insert(identity.caller.clone(), identity.grant.clone());
        if table.shared.len() >= table.sweep_at.max(CALLERS_SWEPT_FROM) {
            table
                .shared
                .retain(|caller, _| Arc::strong_count(caller) > 1);
            table.sweep_at = table.shared.len() * 2;
        }
        identity
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .shared
            .len()
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

    fn identity(subject: &str, expires_at: f64) -> Identity {
        let caller = Caller {
            issuer: "https://idp.test".into(),
            subject: Some(subject.into()),
            scope: Some("patient/*.rs".into()),
            ..Caller::default()
        };
        Identity::new(caller, Some(format!("jti-{expires_at}")), Some(expires_at))
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
        cache.insert(key, identity("u", unix_now() + 60.0));
        assert_eq!(
            cache.get(&key).unwrap().caller.subject.as_deref(),
            Some("u")
        );
        assert!(cache.get(&digest("other")).is_none());
    }

    #[test]
    fn expired_or_zero_age_tokens_are_not_kept() {
        let cache = VerifiedTokens::new(10, Duration::from_secs(300));
        cache.insert(digest("old"), identity("u", unix_now() - 1.0));
        assert!(cache.get(&digest("old")).is_none());
        let off = VerifiedTokens::new(10, Duration::ZERO);
        off.insert(digest("t"), identity("u", unix_now() + 60.0));
        assert!(off.get(&digest("t")).is_none());
    }

    #[test]
    fn an_entry_is_never_used_past_its_expiry() {
        let cache = VerifiedTokens::new(10, Duration::from_secs(300));
        let key = digest("short");
        cache.insert(key, identity("u", unix_now() + 0.05));
        std::thread::sleep(Duration::from_millis(80));
        assert!(cache.get(&key).is_none());
    }

    #[test]
    fn the_cache_stays_bounded() {
        let cache = VerifiedTokens::new(100, Duration::from_secs(300));
        for n in 0..1_000 {
            let token = format!("token-{n}");
            cache.insert(digest(&token), identity("u", unix_now() + 60.0));
        }
        assert!(cache.len() <= 100, "{} entries", cache.len());
    }

    #[test]
    fn tokens_of_one_caller_share_it_and_its_grant() {
        let cache = VerifiedTokens::new(10, Duration::from_secs(300));
        let now = unix_now();
        let first = cache.insert(digest("a"), identity("u", now + 60.0));
        let second = cache.insert(digest("b"), identity("u", now + 61.0));
        let other = cache.insert(digest("c"), identity("v", now + 60.0));
        assert!(Arc::ptr_eq(&first.caller, &second.caller));
        assert!(Arc::ptr_eq(&first.grant, &second.grant));
        assert!(!Arc::ptr_eq(&first.caller, &other.caller));
        // Each token keeps what is its own.
        assert_ne!(first.token_id, second.token_id);
        assert_eq!(second.expires_at, Some(now + 61.0));
        assert_eq!(cache.callers.len(), 2);
    }

    #[test]
    fn callers_no_token_holds_are_swept() {
        let cache = VerifiedTokens::new(100, Duration::from_secs(300));
        let now = unix_now();
        for n in 0..(CALLERS_SWEPT_FROM * 3) {
            let token = format!("token-{n}");
            cache.insert(digest(&token), identity(&format!("user-{n}"), now + 60.0));
        }
        // At most 100 tokens are cached, so few of the 3,072 callers are still held.
        assert!(cache.len() <= 100, "{} entries", cache.len());
        assert!(
            cache.callers.len() < CALLERS_SWEPT_FROM * 2,
            "{} callers",
            cache.callers.len()
        );
    }
}
