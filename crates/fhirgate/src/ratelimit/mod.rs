//! The throttle step: rate-limit rules keyed on token fields and the client address, each a
//! GCRA quota charged by what a request costs the FHIR server.
//!
//! Every rule whose filter matches is charged; a request any rule refuses is refused, and the
//! answer names the rule that asks for the longest wait. Limits live in this process's memory
//! (governor's keyed GCRA); idle keys are forgotten by [`Limiter::forget_idle`], run on a
//! timer, so a stream of new addresses cannot grow memory without bound.

mod client_ip;
mod cost;
mod shared;

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

pub use self::client_ip::client_address;
pub use self::cost::cost_of;
pub use self::shared::SharedSetupError;

use self::shared::SharedStore;

use crate::config::{RateKey, RateLimits, RateRule, RedisFailureMode};
use crate::token::Identity;

type Keyed =
    RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

/// One rule and its allowances.
struct Rule {
    config: RateRule,
    limiter: Keyed,
}

/// The configured rules, and the shared store when there is one.
pub struct Limiter {
    rules: Vec<Rule>,
    clock: DefaultClock,
    shared: Option<(SharedStore, RedisFailureMode)>,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("rules", &self.rules.len())
            .finish()
    }
}

/// What a request asks for, for the rules to judge.
pub struct Charge<'a> {
    /// The verified caller; for a request whose token was refused, an empty identity and
    /// `authenticated: false`.
    pub identity: &'a Identity,
    /// Was the token accepted? Requests whose token was not are charged only to rules keyed
    /// on the client address alone (and not narrowed to interactions, types or scopes), so a
    /// stream of bad tokens from one address is limited too.
    pub authenticated: bool,
    pub client_ip: std::net::IpAddr,
    /// The interaction code (`read`, `search-type`, ...).
    pub interaction: &'a str,
    /// The resource type the request is about, if any.
    pub resource_type: Option<&'a str>,
    pub cost: u32,
}

/// The standing of one rule after a request, for the `RateLimit` headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    pub rule: String,
    /// Units per window, and the window in seconds.
    pub quota: u32,
    pub window_secs: u64,
    /// Units left now, and at most.
    pub remaining: u32,
    pub burst: u32,
    /// Until the allowance is whole again.
    pub full_in: Duration,
}

impl Standing {
    /// `RateLimit-Policy` and `RateLimit` header values (IETF httpapi rate-limit headers).
    pub fn headers(&self) -> (String, String) {
        let name = self.rule.replace(['"', '\\'], "");
        (
            format!("\"{name}\";q={};w={}", self.quota, self.window_secs),
            format!(
                "\"{name}\";r={};t={}",
                self.remaining,
                self.full_in.as_secs_f64().ceil() as u64
            ),
        )
    }
}

/// The outcome of charging a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Within every rule; the tightest standing, if any rule applied.
    Allowed(Option<Standing>),
    /// Refused by `rule`; try again after `retry_after`.
    Throttled { rule: String, retry_after: Duration },
    /// The shared store is unreachable and the failure mode is `closed`.
    StoreUnavailable,
}

impl Limiter {
    pub fn new(config: &RateLimits) -> Result<Self, SharedSetupError> {
        let rules = config
            .rules
            .iter()
            .map(|rule| Rule {
                limiter: RateLimiter::keyed(quota(rule))
                    .with_middleware::<StateInformationMiddleware>(),
                config: rule.clone(),
            })
            .collect();
        let shared = match &config.redis {
            Some(settings) => Some((SharedStore::new(settings)?, settings.failure_mode)),
            None => None,
        };
        Ok(Self {
            rules,
            clock: DefaultClock::default(),
            shared,
        })
    }

    /// Is the shared store, if any, reachable? (Always true without one.)
    pub fn store_reachable(&self) -> bool {
        self.shared
            .as_ref()
            .is_none_or(|(store, _)| store.reachable())
    }

    /// Asks the shared store, if any, whether it answers now. (Always true without one.)
    pub async fn probe_store(&self) -> bool {
        match &self.shared {
            Some((store, _)) => store.probe().await,
            None => true,
        }
    }

    /// Does an unreachable store refuse requests (`closed`), rather than fall back?
    pub fn fails_closed(&self) -> bool {
        matches!(self.shared, Some((_, RedisFailureMode::Closed)))
    }

    /// Charges `charge` to every rule that applies: in the shared store when there is one,
    /// else (or while it is unreachable, in `local` mode) in this process.
    pub async fn charge(&self, charge: &Charge<'_>) -> Verdict {
        let Some((store, mode)) = &self.shared else {
            return self.charge_locally(charge);
        };
        match self.charge_shared(store, charge).await {
            Some(verdict) => verdict,
            None if *mode == RedisFailureMode::Closed => Verdict::StoreUnavailable,
            None => self.charge_locally(charge),
        }
    }

    /// Charges several requests' worth (the entries of a Bundle) in order: the first refusal
    /// stands, otherwise the tightest standing of them all.
    pub async fn charge_all(&self, charges: &[Charge<'_>]) -> Verdict {
        let mut tightest = None;
        for charge in charges {
            match self.charge(charge).await {
                Verdict::Allowed(standing) => tightest = tighter(tightest, standing),
                refused => return refused,
            }
        }
        Verdict::Allowed(tightest)
    }

    async fn charge_shared(&self, store: &SharedStore, charge: &Charge<'_>) -> Option<Verdict> {
        if charge.cost == 0 {
            return Some(Verdict::Allowed(None));
        }
        let mut tally = Tally::default();
        for rule in self.applicable(charge) {
            let config = &rule.config;
            let key = key_of(&config.key, charge);
            let interval = (config.per / config.rate).max(Duration::from_micros(1));
            let answer = store
                .check(&config.name, &key, interval, config.burst, charge.cost)
                .await?;
            tally.add(
                config,
                if answer.allowed {
                    RuleAnswer::Allowed {
                        remaining: answer.remaining,
                        full_in: answer.full_in,
                    }
                } else if charge.cost > config.burst {
                    RuleAnswer::NeverFits
                } else {
                    RuleAnswer::Refused {
                        wait: answer.retry_after,
                    }
                },
            );
        }
        Some(tally.verdict())
    }

    fn applicable<'r>(&'r self, charge: &'r Charge<'_>) -> impl Iterator<Item = &'r Rule> {
        self.rules.iter().filter(move |rule| {
            let config = &rule.config;
            if !charge.authenticated {
                return config.key.iter().all(|k| *k == RateKey::ClientIp)
                    && config.interactions.is_empty()
                    && config.resource_types.is_empty()
                    && config.scopes.is_empty();
            }
            let interaction = config.interactions.is_empty()
                || config.interactions.iter().any(|i| i == charge.interaction);
            let resource_type = config.resource_types.is_empty()
                || charge
                    .resource_type
                    .is_some_and(|t| config.resource_types.iter().any(|r| r == t));
            let scope = config.scopes.is_empty()
                || charge
                    .identity
                    .caller
                    .scope
                    .as_deref()
                    .is_some_and(|granted| {
                        granted
                            .split_ascii_whitespace()
                            .any(|s| config.scopes.iter().any(|wanted| wanted == s))
                    });
            interaction && resource_type && scope
        })
    }

    /// Are there any rules at all?
    pub fn is_active(&self) -> bool {
        !self.rules.is_empty()
    }

    /// Charges `charge` to every rule that applies, in this process's memory.
    fn charge_locally(&self, charge: &Charge<'_>) -> Verdict {
        let Some(cost) = NonZeroU32::new(charge.cost) else {
            return Verdict::Allowed(None);
        };
        let mut tally = Tally::default();
        for rule in self.applicable(charge) {
            let config = &rule.config;
            let key = key_of(&config.key, charge);
            let answer = match rule.limiter.check_key_n(&key, cost) {
                Ok(Ok(snapshot)) => {
                    let remaining = snapshot.remaining_burst_capacity();
                    let used = config.burst.saturating_sub(remaining);
                    RuleAnswer::Allowed {
                        remaining,
                        full_in: config.per * used / config.rate,
                    }
                }
                Ok(Err(not_until)) => RuleAnswer::Refused {
                    wait: not_until.wait_time_from(self.clock.now()),
                },
                Err(_) => RuleAnswer::NeverFits,
            };
            tally.add(config, answer);
        }
        tally.verdict()
    }

    /// Forgets keys whose allowance is full again: they are indistinguishable from new ones.
    pub fn forget_idle(&self) {
        for rule in &self.rules {
            rule.limiter.retain_recent();
            rule.limiter.shrink_to_fit();
        }
    }
}

/// What one rule said about a charge, whichever store asked it.
enum RuleAnswer {
    Allowed {
        remaining: u32,
        full_in: Duration,
    },
    Refused {
        wait: Duration,
    },
    /// More than the burst: it never fits. Waiting a whole period is the honest answer a
    /// client can act on.
    NeverFits,
}

/// The answers of every rule that applies, folded into one verdict: the longest wait of a
/// refusing rule, else the standing of the rule with the least left.
#[derive(Default)]
struct Tally {
    tightest: Option<Standing>,
    refused: Option<(String, Duration)>,
}

impl Tally {
    fn add(&mut self, rule: &RateRule, answer: RuleAnswer) {
        let wait = match answer {
            RuleAnswer::Allowed { remaining, full_in } => {
                let standing = Standing {
                    rule: rule.name.clone(),
                    quota: rule.rate,
                    window_secs: rule.per.as_secs().max(1),
                    remaining,
                    burst: rule.burst,
                    full_in,
                };
                self.tightest = tighter(self.tightest.take(), Some(standing));
                return;
            }
            RuleAnswer::Refused { wait } => wait,
            RuleAnswer::NeverFits => rule.per,
        };
        if self
            .refused
            .as_ref()
            .is_none_or(|(_, longest)| wait > *longest)
        {
            self.refused = Some((rule.name.clone(), wait));
        }
    }

    fn verdict(self) -> Verdict {
        match self.refused {
            Some((rule, retry_after)) => Verdict::Throttled { rule, retry_after },
            None => Verdict::Allowed(self.tightest),
        }
    }
}

/// The standing with less left of two.
fn tighter(a: Option<Standing>, b: Option<Standing>) -> Option<Standing> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.remaining < a.remaining { b } else { a }),
        (a, b) => a.or(b),
    }
}

/// The GCRA quota of a rule: one unit every `per / rate`, `burst` at most.
fn quota(rule: &RateRule) -> Quota {
    let interval = (rule.per / rule.rate).max(Duration::from_nanos(1));
    let burst = NonZeroU32::new(rule.burst).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(interval)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst)
}

/// The key of `charge` under a rule: the named fields, a missing one as empty.
fn key_of(parts: &[RateKey], charge: &Charge<'_>) -> String {
    let identity = charge.identity;
    let mut key = String::new();
    for part in parts {
        let value = match part {
            RateKey::ClientId => identity.caller.client_id.clone().unwrap_or_default(),
            RateKey::Subject => identity.caller.subject.clone().unwrap_or_default(),
            RateKey::Patient => identity.caller.patient.clone().unwrap_or_default(),
            RateKey::Issuer => identity.caller.issuer.clone(),
            RateKey::ClientIp => charge.client_ip.to_string(),
        };
        // The separator cannot occur in a field, so two keys never run together.
        key.push_str(&value.replace('\u{1f}', ""));
        key.push('\u{1f}');
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::Caller;

    fn limits(yaml_rules: &str) -> RateLimits {
        let yaml = format!(
            "{}rate_limits:\n{yaml_rules}",
            crate::config::EMBEDDED_DEFAULT
        );
        crate::config::Config::parse(&yaml, "test")
            .unwrap()
            .rate_limits
    }

    fn identity(client: &str) -> Identity {
        caller(client).into()
    }

    fn caller(client: &str) -> Caller {
        Caller {
            issuer: "https://idp".into(),
            client_id: Some(client.into()),
            subject: Some("user-1".into()),
            ..Caller::default()
        }
    }

    fn charge<'a>(identity: &'a Identity, ip: &str, cost: u32) -> Charge<'a> {
        Charge {
            identity,
            authenticated: true,
            client_ip: ip.parse().unwrap(),
            interaction: "read",
            resource_type: Some("Observation"),
            cost,
        }
    }

    #[test]
    fn a_burst_is_allowed_then_refused_with_a_wait() {
        let limiter = Limiter::new(&limits(
            "  rules:\n    - { name: per-client, key: [client_id], rate: 1, per: 60s, burst: 3 }\n",
        ))
        .unwrap();
        let app = identity("app-1");
        for remaining in [2, 1, 0] {
            match limiter.charge_locally(&charge(&app, "10.0.0.1", 1)) {
                Verdict::Allowed(Some(standing)) => assert_eq!(standing.remaining, remaining),
                other => panic!("{other:?}"),
            }
        }
        match limiter.charge_locally(&charge(&app, "10.0.0.1", 1)) {
            Verdict::Throttled { rule, retry_after } => {
                assert_eq!(rule, "per-client");
                assert!(retry_after > Duration::from_secs(50), "{retry_after:?}");
            }
            other => panic!("{other:?}"),
        }
        // Another client has its own allowance.
        let other = identity("app-2");
        assert!(matches!(
            limiter.charge_locally(&charge(&other, "10.0.0.1", 1)),
            Verdict::Allowed(_)
        ));
    }

    #[test]
    fn costs_are_charged_and_the_tightest_rule_wins() {
        let limiter = Limiter::new(&limits(
            "  rules:\n    - { name: wide, key: [client_id], rate: 100, per: 1s, burst: 100 }\n    - { name: narrow, key: [client_ip], rate: 1, per: 10s, burst: 5 }\n",
        ))
        .unwrap();
        let app = identity("app-1");
        match limiter.charge_locally(&charge(&app, "10.0.0.1", 3)) {
            Verdict::Allowed(Some(standing)) => {
                assert_eq!(standing.rule, "narrow");
                assert_eq!(standing.remaining, 2);
            }
            other => panic!("{other:?}"),
        }
        match limiter.charge_locally(&charge(&app, "10.0.0.1", 3)) {
            Verdict::Throttled { rule, .. } => assert_eq!(rule, "narrow"),
            other => panic!("{other:?}"),
        }
        // More than the burst never fits.
        assert!(matches!(
            limiter.charge_locally(&charge(&app, "10.0.0.2", 6)),
            Verdict::Throttled { .. }
        ));
    }

    #[test]
    fn interaction_filters_and_free_requests() {
        let limiter = Limiter::new(&limits(
            "  rules:\n    - { name: writes, key: [client_id], rate: 1, per: 60s, burst: 1, interactions: [create] }\n",
        ))
        .unwrap();
        let app = identity("app-1");
        for _ in 0..5 {
            assert_eq!(
                limiter.charge_locally(&charge(&app, "10.0.0.1", 1)),
                Verdict::Allowed(None),
                "reads are not charged by a create-only rule"
            );
        }
        assert_eq!(
            limiter.charge_locally(&charge(&app, "10.0.0.1", 0)),
            Verdict::Allowed(None)
        );
    }

    #[test]
    fn bad_rules_are_refused_with_their_key() {
        for (rule, key) in [
            (
                "{ name: a, key: [client_id], rate: 0, per: 1s, burst: 1 }",
                "rate_limits.rules[0].rate",
            ),
            (
                "{ name: a, key: [], rate: 1, per: 1s, burst: 1 }",
                "rate_limits.rules[0].key",
            ),
            (
                "{ name: a, key: [client_id], rate: 1, per: 0s, burst: 1 }",
                "rate_limits.rules[0].per",
            ),
            (
                "{ name: a, key: [tenant], rate: 1, per: 1s, burst: 1 }",
                "tenant",
            ),
            (
                "{ name: a, key: [client_id], rate: 1, per: 1s, burst: 1, interactions: [serch-type] }",
                "rate_limits.rules[0].interactions",
            ),
            (
                "{ name: a, key: [client_id], rate: 1, per: 1s, burst: 1, resource_types: [Observaton] }",
                "rate_limits.rules[0].resource_types",
            ),
            (
                "{ name: a, key: [client_id], rate: 1, per: 1s, burst: 1 }\n    - { name: a, key: [subject], rate: 1, per: 1s, burst: 1 }",
                "rate_limits.rules[1].name",
            ),
        ] {
            let yaml = format!(
                "{}rate_limits:\n  rules:\n    - {rule}\n",
                crate::config::EMBEDDED_DEFAULT
            );
            let error = crate::config::Config::parse(&yaml, "test")
                .unwrap_err()
                .to_string();
            assert!(error.contains(key), "{rule}: {error}");
        }
    }

    #[test]
    fn rules_can_be_scoped_to_types_and_scopes() {
        let limiter = Limiter::new(&limits(
            "  rules:\n    - { name: bulk, key: [client_id], rate: 1, per: 60s, burst: 1, scopes: [system/*.rs], resource_types: [Observation] }\n",
        ))
        .unwrap();
        let patient_app: Identity = Caller {
            scope: Some("patient/*.rs".into()),
            ..caller("app-1")
        }
        .into();
        for _ in 0..3 {
            assert_eq!(
                limiter.charge_locally(&charge(&patient_app, "10.0.0.1", 1)),
                Verdict::Allowed(None)
            );
        }
        let bulk: Identity = Caller {
            scope: Some("system/*.rs".into()),
            ..caller("bulk-1")
        }
        .into();
        assert!(matches!(
            limiter.charge_locally(&charge(&bulk, "10.0.0.1", 1)),
            Verdict::Allowed(Some(_))
        ));
        assert!(matches!(
            limiter.charge_locally(&charge(&bulk, "10.0.0.1", 1)),
            Verdict::Throttled { .. }
        ));
        let other_type = Charge {
            resource_type: Some("Patient"),
            ..charge(&bulk, "10.0.0.1", 1)
        };
        assert_eq!(limiter.charge_locally(&other_type), Verdict::Allowed(None));
    }

    #[test]
    fn refused_tokens_are_charged_to_address_rules_only() {
        let limiter = Limiter::new(&limits(
            "  rules:\n    - { name: per-client, key: [client_id], rate: 1, per: 60s, burst: 1 }\n    - { name: per-address, key: [client_ip], rate: 1, per: 60s, burst: 2 }\n",
        ))
        .unwrap();
        let nobody = Identity::default();
        let anonymous = |ip| Charge {
            authenticated: false,
            ..charge(&nobody, ip, 1)
        };
        for _ in 0..2 {
            match limiter.charge_locally(&anonymous("10.0.0.9")) {
                Verdict::Allowed(Some(standing)) => assert_eq!(standing.rule, "per-address"),
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(
            limiter.charge_locally(&anonymous("10.0.0.9")),
            Verdict::Throttled { rule, .. } if rule == "per-address"
        ));
        assert!(matches!(
            limiter.charge_locally(&anonymous("10.0.0.10")),
            Verdict::Allowed(_)
        ));
    }

    #[test]
    fn trusted_proxies_are_addresses_or_blocks() {
        let limits = limits("  trusted_proxies: [\"10.0.0.1\", \"::1\", \"192.168.0.0/16\"]\n");
        let shown: Vec<String> = limits
            .trusted_proxies
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(shown, ["10.0.0.1/32", "::1/128", "192.168.0.0/16"]);
        let yaml = format!(
            "{}rate_limits:\n  trusted_proxies: [\"ten.0.0.1\"]\n",
            crate::config::EMBEDDED_DEFAULT
        );
        let error = crate::config::Config::parse(&yaml, "test")
            .unwrap_err()
            .to_string();
        assert!(error.contains("ten.0.0.1"), "{error}");
    }

    #[test]
    fn keys_do_not_run_together() {
        let parts = [RateKey::ClientId, RateKey::Subject];
        let a: Identity = Caller {
            client_id: Some("ab".into()),
            subject: Some("c".into()),
            ..Caller::default()
        }
        .into();
        let b: Identity = Caller {
            client_id: Some("a".into()),
            subject: Some("bc".into()),
            ..Caller::default()
        }
        .into();
        assert_ne!(
            key_of(&parts, &charge(&a, "10.0.0.1", 1)),
            key_of(&parts, &charge(&b, "10.0.0.1", 1))
        );
    }
}
