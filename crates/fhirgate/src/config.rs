//! The configuration file: one YAML document, parsed strictly.
//!
//! Unknown keys, wrong types and invalid values are errors that name the key and the line.
//! Values that have a syntax of their own (URLs, durations, algorithms) are checked while
//! parsing, so their errors carry a position too; rules that span several keys are checked
//! afterwards by [`Config::validate`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fhirgate_policy::options::{
    self as policy, BatchRefusal, OperationPolicy, OperationRule, PolicyOptions, ReadRefusal,
};
use fhirgate_policy::scope::Perms;
use serde::{Deserialize, Deserializer};

mod audit;
mod break_glass;
mod client_credentials;
mod edge;
mod locate;
mod routes;
pub mod schema;
pub use audit::{Audit, Fsync, JsonlSink, NetworkSink, Sink, Spool, StdoutSink, WhenFull};
pub use break_glass::BreakGlass;
pub use client_credentials::{ClientCredentials, ClientSecretError, SecretAuth};
pub use edge::{
    AllowedOrigin, Cors, Metadata, Smart, default_allow_headers, default_expose_headers,
};
pub use routes::{
    ActiveHealth, Balance, Health, PassiveHealth, Route, ServerAddress, strip_port, under_base_path,
};

/// The configuration compiled into the binary, used when `--config` is not given.
pub const EMBEDDED_DEFAULT: &str = include_str!("../config/default.yaml");

/// The configuration format this fhirgate reads (`version:` in the file). It changes only
/// when a key changes meaning or goes away (CHANGELOG.md); new optional keys keep it.
pub const CONFIG_VERSION: u32 = 1;

/// The whole gateway configuration.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The configuration format this file is written in: 1, also when absent. A file
    /// written for another format is refused with what to do, instead of being read as if
    /// it meant what this one does (CHANGELOG.md).
    #[serde(default)]
    pub version: Option<u32>,
    /// Address of the FHIR listener.
    pub listen: SocketAddr,
    /// Address of the admin listener (`/healthz`, `/readyz`, `/metrics`); loopback
    /// (`127.0.0.1:8081`) when absent. Keep it on loopback or a management network.
    #[serde(default = "default_admin_listen")]
    #[schemars(with = "String")]
    pub admin_listen: SocketAddr,
    /// Who may read the admin listener's `/readyz` and `/metrics` (`/healthz` stays open
    /// for liveness probes). Anyone who can connect when absent.
    #[serde(default)]
    pub admin: Admin,
    /// The FHIR server behind the gateway: one route, reached under
    /// `upstream.public_base_path`. Give either this or `routes`.
    #[serde(default)]
    pub upstream: Option<Upstream>,
    /// Several FHIR APIs behind one gateway, each under a public base path (and optionally a
    /// host) of its own, with its own upstream and audience (docs/ROUTES.md). Give either
    /// this or `upstream`.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Names this gateway process in audit records; host name and process id when absent.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// TLS on the FHIR listener, with optional client certificates (RFC 8705). Plain HTTP
    /// when absent.
    #[serde(default)]
    pub tls: Option<Tls>,
    /// The gateway's public FHIR base URL as clients address it (`https://gw.example/fhir`);
    /// DPoP proofs must name URLs under it. When absent, the connection's scheme (`https`
    /// with `tls`, else `http`), the request's `Host` header and the public base path make it.
    /// With `routes`, each route has a `public_url` of its own instead.
    #[serde(default)]
    pub public_url: Option<HttpUrl>,
    /// Token issuers whose access tokens are accepted.
    pub issuers: Vec<Issuer>,
    /// Where the audit trail goes.
    pub audit: Audit,
    /// Limits on what a client may send and hold: sizes, timeouts, connections, HTTP/2
    /// streams, requests at the FHIR server (docs/SECURITY.md).
    #[serde(default)]
    pub limits: Limits,
    /// Authorization choices where SMART and FHIR leave room.
    #[serde(default)]
    pub policy: Policy,
    /// Rate limits on authenticated requests.
    #[serde(default)]
    pub rate_limits: RateLimits,
    /// Trace export, beyond the logs and the metrics the gateway always has.
    #[serde(default)]
    pub telemetry: Telemetry,
    /// The `.well-known/smart-configuration` document: its authorization server, lifetime
    /// and overrides (docs/DISCOVERY.md). Made from the first issuer when absent.
    #[serde(default)]
    pub smart: Option<Smart>,
    /// The CapabilityStatement cache.
    #[serde(default)]
    pub metadata: Metadata,
    /// Cross-origin requests from browser apps; none are allowed on the FHIR API when
    /// absent (`metadata` and SMART discovery allow any origin regardless).
    #[serde(default)]
    pub cors: Option<Cors>,
    /// Break-the-glass: an emergency purpose of use lets a user's request through that the
    /// token's scopes do not cover (docs/BREAK-GLASS.md). Off when absent.
    #[serde(default, deserialize_with = "break_glass::section")]
    pub break_glass: Option<BreakGlass>,
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8081))
}

/// Access to the admin listener.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// A file holding the bearer token `/readyz` and `/metrics` require (trailing newline
    /// ignored).
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    /// An environment variable holding that token, instead of a file.
    #[serde(default)]
    pub bearer_token_env: Option<String>,
}

/// Why a bearer token named by `bearer_token_file` or `bearer_token_env` cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum BearerTokenError {
    #[error("bearer_token_file: cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bearer_token_file: {0} is empty")]
    EmptyFile(PathBuf),
    #[error("bearer_token_env: the environment variable {0} is not set or empty")]
    MissingEnv(String),
    #[error("give at most one of bearer_token_file and bearer_token_env")]
    TwoSources,
}

impl BearerTokenError {
    /// The key the error is about.
    pub fn key(&self) -> &'static str {
        match self {
            Self::Read { .. } | Self::EmptyFile(_) | Self::TwoSources => "bearer_token_file",
            Self::MissingEnv(_) => "bearer_token_env",
        }
    }
}

/// Where `key` (`upstream.ca_file`, `routes[1].upstream.bearer_token_file`) is written in a
/// configuration `text`: its line, when it is.
pub fn line_of(text: &str, key: &str) -> Option<u64> {
    locate::locate(text, key).map(|(line, _)| line as u64)
}

/// The bearer token in `file` or in the environment variable `env` (trimmed, never empty);
/// `None` when neither is named. The one reader of every such pair in the configuration.
pub fn bearer_token(
    file: Option<&Path>,
    env: Option<&str>,
) -> Result<Option<String>, BearerTokenError> {
    let token = match (file, env) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => return Err(BearerTokenError::TwoSources),
        (Some(path), None) => {
            let text = std::fs::read_to_string(path).map_err(|source| BearerTokenError::Read {
                path: path.to_owned(),
                source,
            })?;
            let token = text.trim().to_owned();
            if token.is_empty() {
                return Err(BearerTokenError::EmptyFile(path.to_owned()));
            }
            token
        }
        (None, Some(name)) => match std::env::var(name) {
            Ok(token) if !token.trim().is_empty() => token.trim().to_owned(),
            _ => return Err(BearerTokenError::MissingEnv(name.to_owned())),
        },
    };
    Ok(Some(token))
}

/// Why the admin token cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("admin.{0}")]
pub struct AdminTokenError(#[from] pub BearerTokenError);

impl Admin {
    /// The token required, read from its file or variable; `None` when none is configured.
    pub fn token(&self) -> Result<Option<String>, AdminTokenError> {
        Ok(bearer_token(
            self.bearer_token_file.as_deref(),
            self.bearer_token_env.as_deref(),
        )?)
    }
}

/// Trace export over OTLP/HTTP, in a binary built with the `otlp` feature.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    /// Base URL of an OpenTelemetry collector's OTLP/HTTP receiver
    /// (`http://127.0.0.1:4318`); spans are POSTed to `/v1/traces` under it. No spans are
    /// exported when absent.
    #[serde(default)]
    pub otlp_endpoint: Option<HttpUrl>,
    /// `service.name` of the exported spans.
    #[serde(default = "default_service_name")]
    pub service_name: String,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: default_service_name(),
        }
    }
}

impl Telemetry {
    /// Whether this binary can export what the section asks for.
    fn validate(&self) -> Result<(), (String, String)> {
        if self.service_name.trim().is_empty() {
            return Err(("telemetry.service_name".into(), "must not be empty".into()));
        }
        if self.otlp_endpoint.is_some() && !cfg!(feature = "otlp") {
            return Err((
                "telemetry.otlp_endpoint".into(),
                "this fhirgate binary was built without the `otlp` feature, so it cannot export \
                 traces; build it with `cargo build --release -p fhirgate --features otlp` or remove the key"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// Rate limits: rules, what requests cost, and which peers may say who the client is.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    /// Every rule that applies to a request is charged; the most restrictive refusal wins.
    #[serde(default)]
    pub rules: Vec<RateRule>,
    /// What each kind of request costs.
    #[serde(default)]
    pub costs: Costs,
    /// Proxies (addresses or CIDR blocks) whose `X-Forwarded-For` / `Forwarded` headers name
    /// the client; from anyone else those headers are ignored.
    #[serde(default, deserialize_with = "networks")]
    #[schemars(with = "Vec<schema::NetworkText>")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Send `RateLimit-Policy` and `RateLimit` headers on allowed responses.
    #[serde(default = "default_true")]
    pub headers: bool,
    /// A Redis server shared by every replica; the limits are this process's own without it.
    #[serde(default)]
    pub redis: Option<RedisStore>,
}

/// Rate limits kept in Redis, shared by every gateway that uses the same server.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisStore {
    /// `redis://host:port/db` (or `rediss://` for TLS).
    pub url: String,
    /// What happens while Redis cannot be reached.
    #[serde(default)]
    pub failure_mode: RedisFailureMode,
    /// Time allowed for one check, connection included.
    #[serde(default = "default_redis_timeout", deserialize_with = "duration")]
    #[schemars(with = "schema::DurationText")]
    pub timeout: Duration,
    /// Prefix of the keys the gateway writes.
    #[serde(default = "default_redis_prefix")]
    pub key_prefix: String,
}

/// What the gateway does while Redis is unreachable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RedisFailureMode {
    /// Limit in this process's memory until Redis is back.
    #[default]
    Local,
    /// Refuse limited requests with 503 until Redis is back.
    Closed,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            costs: Costs::default(),
            trusted_proxies: Vec::new(),
            headers: true,
            redis: None,
        }
    }
}

/// One rate-limit rule: a key built from token fields and the client address, and a GCRA
/// quota (`rate` per `per`, up to `burst` at once).
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateRule {
    /// Named in headers, refusals and the audit trail.
    pub name: String,
    /// What tells callers apart; each distinct combination has its own allowance.
    pub key: Vec<RateKey>,
    /// Cost units replenished per `per`.
    pub rate: u32,
    /// The period of `rate`.
    #[serde(deserialize_with = "duration")]
    #[schemars(with = "schema::DurationText")]
    pub per: Duration,
    /// Cost units that may be spent at once.
    pub burst: u32,
    /// Only these interactions (`read`, `search-type`, ...) are charged; all when absent.
    #[serde(default)]
    pub interactions: Vec<String>,
    /// Only requests on these resource types are charged; all when absent.
    #[serde(default)]
    pub resource_types: Vec<String>,
    /// Only tokens holding one of these scopes (exactly as granted) are charged; all when
    /// absent. E.g. `system/*.rs` for bulk clients.
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// A part of a rate-limit key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RateKey {
    ClientId,
    Subject,
    Patient,
    Issuer,
    ClientIp,
}

/// What requests cost, in the units of the rules' rates. Defaults follow the load a FHIR
/// server takes: a read is cheapest, a search more, includes and large pages more again,
/// writes and bulk exports most.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Costs {
    pub read: u32,
    pub search: u32,
    /// Added to a search with `_include` or `_revinclude`.
    pub include: u32,
    /// Added to a search asking for more than `large_count` results a page.
    pub large_page: u32,
    pub large_count: u32,
    pub write: u32,
    pub operation: u32,
    pub export: u32,
}

impl Default for Costs {
    fn default() -> Self {
        Self {
            read: 1,
            search: 2,
            include: 2,
            large_page: 2,
            large_count: 100,
            write: 3,
            operation: 5,
            export: 20,
        }
    }
}

/// Authorization choices where SMART and FHIR leave room (see docs/POLICY.md).
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// How a refused read of one resource is answered.
    #[serde(default)]
    pub refused_reads: RefusedReads,
    /// Operations allowed beyond the built-in `$everything` and `$export` rules.
    #[serde(default)]
    pub operations: Vec<Operation>,
    /// How a batch with refused entries is answered (transactions are all-or-nothing).
    #[serde(default)]
    pub refused_batch_entries: RefusedBatchEntries,
}

/// How a batch with refused entries is answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RefusedBatchEntries {
    /// The whole batch is refused with 403, naming each refused entry.
    #[default]
    RefuseBatch,
    /// The allowed entries are forwarded; each refused one is answered in the batch-response.
    AnswerInBatch,
}

/// How a refused read of one resource is answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RefusedReads {
    /// 403 `forbidden` with `error="insufficient_scope"`.
    #[default]
    Forbidden,
    /// 404 `not-found`: the client cannot tell a refused read from a missing resource.
    NotFound,
}

/// One allowed operation.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Operation {
    /// Operation name without `$`.
    pub name: String,
    /// Where it may be invoked.
    pub level: OperationLevel,
    /// Resource type (type and instance level); any type when absent.
    #[serde(default, rename = "type")]
    pub resource_type: Option<String>,
    /// SMART v2 letters (`cruds` subset) the token must hold on the type.
    pub requires: String,
}

/// Where an operation is invoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OperationLevel {
    System,
    Type,
    Instance,
}

/// The FHIR server behind the gateway (or behind one route): its base URL, the servers that
/// serve it, and how the gateway talks to them.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// Base URL of the upstream FHIR server, e.g. `http://10.0.0.5:8080/fhir`. Its host is
    /// what requests name in `Host` (and TLS verifies); its base is what the gateway hides
    /// from clients.
    pub url: HttpUrl,
    /// Path under which clients reach the FHIR API on the gateway, e.g. `/fhir`. Required in
    /// the top-level `upstream` section; a route's path is its `path`.
    #[serde(default)]
    pub public_base_path: Option<BasePath>,
    /// The addresses (`host:port`, or `host` for the port of `url`) of the servers that serve
    /// `url`'s FHIR base, balanced between; `url`'s own host and port when absent. Requests to
    /// every one of them name `url`'s host.
    #[serde(default, deserialize_with = "routes::servers")]
    #[schemars(with = "Option<Vec<String>>")]
    pub servers: Option<Vec<ServerAddress>>,
    /// How requests are spread over the servers: `round-robin` (each in turn, the default)
    /// or `least-outstanding`.
    #[serde(default)]
    pub balance: Balance,
    /// How many times a GET or HEAD whose bytes may have reached a server that then failed
    /// (reset, timeout) is sent again, each time to another server. A request that could not
    /// connect is always tried on the other servers, whatever its method.
    #[serde(default = "routes::default_retries")]
    pub retries: u32,
    /// Speak HTTP/2 to the servers: by prior knowledge to `http`, by ALPN to `https`. HTTP/1.1
    /// when false.
    #[serde(default)]
    pub http2: bool,
    /// When a server is taken out of rotation and brought back.
    #[serde(default)]
    pub health: Health,
    /// Time allowed to open a connection to the upstream.
    #[serde(default = "default_connect_timeout", deserialize_with = "duration")]
    #[schemars(with = "schema::DurationText")]
    pub connect_timeout: Duration,
    /// Time allowed for the upstream to answer with its status line and headers, and again
    /// for the rest of a response body that the gateway must read to check it.
    #[serde(default = "default_response_timeout", deserialize_with = "duration")]
    #[schemars(with = "schema::DurationText")]
    pub response_timeout: Duration,
    /// Tell the upstream who is calling, in `X-Fhirgate-*` headers taken from the verified
    /// token (client, subject, user, patient, encounter, fhirContext, scopes). Copies a client
    /// sends itself are always removed.
    #[serde(default)]
    pub identity_headers: bool,
    /// PEM file of the CAs that sign an `https` upstream's certificate; the system's roots
    /// when absent.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain the gateway presents to an upstream that requires mutual TLS
    /// (with `client_key`).
    #[serde(default)]
    pub client_certificate: Option<PathBuf>,
    /// PEM private key of `client_certificate`.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// A file holding a token the gateway sends upstream as `Authorization: Bearer`, so that
    /// the FHIR server can refuse whatever did not come through the gateway. (The client's
    /// own token is never passed on.)
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    /// An environment variable holding that token, instead of a file.
    #[serde(default)]
    pub bearer_token_env: Option<String>,
    /// Instead of a static token: an access token the gateway gets from a token endpoint by
    /// the client-credentials grant, refreshed before it expires, and sends upstream as
    /// `Authorization: Bearer` (docs/UPSTREAM-CREDENTIALS.md).
    #[serde(default)]
    pub client_credentials: Option<ClientCredentials>,
}

impl Upstream {
    /// Rules of the credential, for the section at `at` (`upstream`, `routes[1].upstream`).
    pub(crate) fn validate_credential(&self, at: &str) -> Result<(), (String, String)> {
        let Some(grant) = &self.client_credentials else {
            return Ok(());
        };
        if self.bearer_token_file.is_some() || self.bearer_token_env.is_some() {
            return Err((
                format!("{at}.client_credentials"),
                "cannot be used with bearer_token_file or bearer_token_env: give one credential"
                    .into(),
            ));
        }
        grant
            .validate()
            .map_err(|(key, message)| (format!("{at}.client_credentials.{key}"), message))
    }
}

/// One trusted token issuer.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Issuer {
    /// The exact `iss` value of its tokens.
    pub issuer: String,
    /// The audience the gateway requires in `aud`: normally its own public FHIR base URL.
    pub audience: String,
    /// JWKS location; found by OpenID discovery when absent.
    #[serde(default)]
    pub jwks_uri: Option<HttpUrl>,
    /// Signature algorithms accepted from this issuer.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<Algorithm>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    #[serde(default = "default_leeway", deserialize_with = "duration")]
    #[schemars(with = "schema::DurationText")]
    pub leeway: Duration,
    /// Minimum time between two JWKS fetches caused by tokens naming an unknown key.
    #[serde(default = "default_refetch_cooldown", deserialize_with = "duration")]
    #[schemars(with = "schema::DurationText")]
    pub jwks_refetch_cooldown: Duration,
    /// How often the JWKS is fetched again in the background, at most: a shorter
    /// `Cache-Control: max-age` on the JWKS response brings the next fetch forward.
    #[serde(default = "default_refresh_interval", deserialize_with = "duration")]
    #[schemars(with = "schema::DurationText")]
    pub jwks_refresh_interval: Duration,
    /// The shortest wait between background fetches, whatever `max-age` says; also the retry
    /// delay after a failed fetch.
    #[serde(
        default = "default_min_refresh_interval",
        deserialize_with = "duration"
    )]
    #[schemars(with = "schema::DurationText")]
    pub jwks_min_refresh_interval: Duration,
    /// Longest accepted lifetime (`exp - iat`); tokens without `iat` are refused when set.
    #[serde(default, deserialize_with = "option_duration")]
    #[schemars(with = "Option<schema::DurationText>")]
    pub max_token_lifetime: Option<Duration>,
    /// Required JOSE `typ`, e.g. `at+jwt` (RFC 9068); compared without case and without an
    /// `application/` prefix.
    #[serde(default)]
    pub required_typ: Option<String>,
    /// Which claims carry scopes, patient, user and client.
    #[serde(default)]
    pub claims: crate::token::ClaimMapping,
    /// RFC 7662 introspection for opaque tokens (and optionally JWTs) of this issuer.
    #[serde(default)]
    pub introspection: Option<crate::token::IntrospectionConfig>,
    /// Accept JWTs signed with this issuer's keys; `false` for an issuer whose tokens are
    /// all opaque (no JWKS is fetched then).
    #[serde(default = "default_true")]
    pub jwt: bool,
    /// DPoP-bound tokens (RFC 9449) of this issuer, and whether unbound ones are accepted.
    #[serde(default)]
    pub dpop: DpopSettings,
}

/// TLS termination on the FHIR listener.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM file with the server certificate chain, leaf first.
    pub certificate: PathBuf,
    /// PEM file with the server's private key.
    pub private_key: PathBuf,
    /// PEM file with the CAs whose client certificates are accepted. Without it no client
    /// certificate is asked for, and certificate-bound tokens cannot be used.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// Whether a connection without a client certificate is accepted (with `client_ca`).
    #[serde(default)]
    pub client_certificates: ClientCertificates,
}

/// Whether clients must present a certificate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ClientCertificates {
    /// Asked for and verified when sent; bearer tokens work without one.
    #[default]
    Optional,
    /// The TLS handshake fails without a valid client certificate.
    Required,
}

/// Proof-of-possession rules for one issuer's tokens.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DpopSettings {
    /// Refuse tokens that are not DPoP-bound.
    pub required: bool,
    /// Algorithms a proof may be signed with.
    pub algorithms: Vec<Algorithm>,
    /// Oldest proof accepted (by its `iat`).
    #[serde(deserialize_with = "duration")]
    #[schemars(with = "schema::DurationText")]
    pub proof_max_age: Duration,
    /// Clock skew tolerated on a proof's `iat`.
    #[serde(deserialize_with = "duration")]
    #[schemars(with = "schema::DurationText")]
    pub proof_leeway: Duration,
}

impl Default for DpopSettings {
    fn default() -> Self {
        Self {
            required: false,
            algorithms: vec![
                Algorithm::ES256,
                Algorithm::ES384,
                Algorithm::RS256,
                Algorithm::PS256,
                Algorithm::EdDSA,
            ],
            proof_max_age: Duration::from_secs(60),
            proof_leeway: Duration::from_secs(5),
        }
    }
}

/// Asymmetric JWS algorithms the gateway can verify. `none` and HMAC are not among them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, schemars::JsonSchema)]
pub enum Algorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

/// Limits on what a client may send and hold.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest request body accepted (it is read whole to be checked).
    #[serde(default = "default_max_request_body")]
    pub max_request_body: usize,
    /// Largest upstream response body the gateway reads to check it.
    #[serde(default = "default_max_checked_response")]
    pub max_checked_response: usize,
    /// Longest bearer token accepted.
    #[serde(default = "default_max_token_length")]
    pub max_token_length: usize,
    /// Time allowed to receive a request body in full, from when the gateway starts reading
    /// it; a client that stops sending mid-way gets 408 and nothing reaches the FHIR server.
    #[serde(
        default = "default_request_body_timeout",
        deserialize_with = "duration"
    )]
    #[schemars(with = "schema::DurationText")]
    pub request_body_timeout: Duration,
    /// Requests the gateway has at the FHIR server at once (from sending one to its status
    /// line and headers); one more is answered 503 with `Retry-After` at once. Changes only
    /// on restart.
    #[serde(default = "default_max_upstream_requests")]
    pub max_upstream_requests: u32,
    /// Client connections: how many, and what each may hold. Changes only on restart.
    #[serde(default)]
    pub connections: ConnectionLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request_body: default_max_request_body(),
            max_checked_response: default_max_checked_response(),
            max_token_length: default_max_token_length(),
            request_body_timeout: default_request_body_timeout(),
            max_upstream_requests: default_max_upstream_requests(),
            connections: ConnectionLimits::default(),
        }
    }
}

/// Limits on client connections, for slow and greedy clients (docs/SECURITY.md).
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionLimits {
    /// Client connections open at once; a connection accepted over it is closed at once.
    pub max_open: u32,
    /// HTTP/1.1: time allowed to receive a request's line and headers, counted from the
    /// connection's start or the end of the previous response, so it also closes idle
    /// keep-alive connections. The connection is closed when it passes. Also the longest a
    /// connection of either protocol may stay silent before its first byte.
    #[serde(deserialize_with = "duration")]
    #[schemars(with = "schema::DurationText")]
    pub header_read_timeout: Duration,
    /// A connection (HTTP/1.1 or HTTP/2) with no request in progress and nothing sent or
    /// received for this long is closed.
    #[serde(deserialize_with = "duration")]
    #[schemars(with = "schema::DurationText")]
    pub idle_timeout: Duration,
    /// Largest request head: HTTP/1.1's request line and headers (431 over it), HTTP/2's
    /// header list (`SETTINGS_MAX_HEADER_LIST_SIZE`). At least 8192.
    pub max_header_bytes: u32,
    /// Most header fields in an HTTP/1.1 request (431 over it).
    pub max_headers: u32,
    /// HTTP/2 connections.
    pub http2: Http2Limits,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_open: 10_000,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            http2: Http2Limits::default(),
        }
    }
}

/// Limits on one HTTP/2 connection. A client that passes a reset limit gets GOAWAY
/// (`ENHANCE_YOUR_CALM`) and the connection is closed.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Http2Limits {
    /// Streams a client may have open at once (`SETTINGS_MAX_CONCURRENT_STREAMS`); more are
    /// refused with `REFUSED_STREAM`.
    pub max_concurrent_streams: u32,
    /// Streams a client opened and reset before the gateway took them up, pending at once:
    /// the rapid reset attack (CVE-2023-44487).
    pub max_pending_accept_reset_streams: u32,
    /// Streams the gateway may reset for a client's errors in one connection, streams refused
    /// over `max_concurrent_streams` included.
    pub max_local_error_reset_streams: u32,
}

impl Default for Http2Limits {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 100,
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 100,
        }
    }
}

impl Limits {
    /// Values the server cannot run with: zero counts and durations, and request heads too
    /// small for a token.
    fn validate(&self) -> Result<(), (String, String)> {
        let connections = &self.connections;
        let http2 = &connections.http2;
        let zero = [
            ("request_body_timeout", self.request_body_timeout.is_zero()),
            ("max_upstream_requests", self.max_upstream_requests == 0),
            ("connections.max_open", connections.max_open == 0),
            (
                "connections.header_read_timeout",
                connections.header_read_timeout.is_zero(),
            ),
            (
                "connections.idle_timeout",
                connections.idle_timeout.is_zero(),
            ),
            ("connections.max_headers", connections.max_headers == 0),
            (
                "connections.http2.max_concurrent_streams",
                http2.max_concurrent_streams == 0,
            ),
            (
                "connections.http2.max_pending_accept_reset_streams",
                http2.max_pending_accept_reset_streams == 0,
            ),
            (
                "connections.http2.max_local_error_reset_streams",
                http2.max_local_error_reset_streams == 0,
            ),
        ];
        if let Some((key, _)) = zero.iter().find(|(_, is_zero)| *is_zero) {
            return Err((format!("limits.{key}"), "must be more than zero".into()));
        }
        let header_bytes = usize::try_from(connections.max_header_bytes).unwrap_or(usize::MAX);
        if header_bytes < 8192 {
            return Err((
                "limits.connections.max_header_bytes".into(),
                "must be at least 8192".into(),
            ));
        }
        if header_bytes <= self.max_token_length {
            return Err((
                "limits.connections.max_header_bytes".into(),
                "must be more than limits.max_token_length, or the longest token accepted \
                 cannot be sent"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// A secret written in the configuration itself, which is never accepted: reading one is an
/// error (with its line) that says where secrets go instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InlineSecret {}

impl<'de> Deserialize<'de> for InlineSecret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(deserializer)?;
        Err(serde::de::Error::custom(INLINE_SECRET_REFUSED))
    }
}

/// Why an inline secret is refused. Its error is reported without the excerpt of the file
/// other errors quote, which would repeat the secret.
const INLINE_SECRET_REFUSED: &str = "secrets are not written in the configuration: put this \
     one in a file and name it with `client_secret_file`, or in an environment variable named \
     by `client_secret_env`";

/// An absolute `http` or `https` URL without query or fragment, kept without a trailing `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl(http::Uri);

/// A public base path: starts with `/`, no trailing `/` (the root is the empty path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasePath(String);

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("{origin}: {key}: {message}")]
    Invalid {
        origin: String,
        key: String,
        message: String,
    },
}

impl Config {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The configuration compiled into the binary.
    pub fn embedded_default() -> Self {
        Self::parse(EMBEDDED_DEFAULT, "embedded default")
            .expect("the embedded default configuration is valid")
    }

    /// Parses and checks a YAML document; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: Config = serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse {
            origin: match e.location() {
                Some(at) => format!("{origin}:{}:{}", at.line(), at.column()),
                None => origin.to_owned(),
            },
            message: match e.to_string() {
                quoting_a_secret if quoting_a_secret.contains(INLINE_SECRET_REFUSED) => {
                    INLINE_SECRET_REFUSED.to_owned()
                }
                message => message,
            },
        })?;
        let mut config = config;
        config
            .validate()
            .map_err(|(key, message)| ConfigError::Invalid {
                // Where the key is written, when it is.
                origin: match locate::locate(text, &key) {
                    Some((line, column)) => format!("{origin}:{line}:{column}"),
                    None => origin.to_owned(),
                },
                key,
                message,
            })?;
        config.normalize_routes();
        Ok(config)
    }

    /// Rules that span several keys.
    /// How audit records name this process: `instance_id`, or the host name and process id.
    pub fn instance(&self) -> String {
        self.instance_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .or_else(|| std::env::var("HOSTNAME").ok())
                .unwrap_or_else(|| "fhirgate".to_owned());
            format!("{host}-{}", std::process::id())
        })
    }

    /// The public FHIR base URL of the first route: its `public_url`, or the listener's
    /// address and the route's base path.
    pub fn public_base(&self) -> String {
        let Some(route) = self.routes.first() else {
            return String::new();
        };
        match &route.public_url {
            Some(url) => url.as_str(),
            None => {
                let scheme = if self.tls.is_some() { "https" } else { "http" };
                format!("{scheme}://{}{}", self.listen, route.path.as_str())
            }
        }
    }

    fn validate(&self) -> Result<(), (String, String)> {
        if let Some(version) = self.version
            && version != CONFIG_VERSION
        {
            return Err((
                "version".into(),
                format!(
                    "this file is written for configuration version {version}; this fhirgate \
                     {} reads version {CONFIG_VERSION} (CHANGELOG.md says what changed between \
                     them)",
                    env!("CARGO_PKG_VERSION")
                ),
            ));
        }
        self.validate_routes()?;
        self.audit.validate()?;
        self.telemetry.validate()?;
        if self.issuers.is_empty() {
            return Err(("issuers".into(), "at least one issuer is required".into()));
        }
        if let Some(tls) = &self.tls
            && tls.client_ca.is_none()
            && tls.client_certificates == ClientCertificates::Required
        {
            return Err((
                "tls.client_certificates".into(),
                "required client certificates need tls.client_ca to verify them".into(),
            ));
        }
        for (i, rule) in self.rate_limits.rules.iter().enumerate() {
            let key = |k: &str| format!("rate_limits.rules[{i}].{k}");
            let codes = fhirgate_policy::request::Interaction::ALL.map(|i| i.code());
            if let Some(unknown) = rule
                .interactions
                .iter()
                .find(|i| !codes.contains(&i.as_str()))
            {
                return Err((
                    key("interactions"),
                    format!(
                        "unknown interaction {unknown:?}; one of {}",
                        codes.join(", ")
                    ),
                ));
            }
            if let Some(unknown) = rule
                .resource_types
                .iter()
                .find(|t| !fhirgate_policy::scope::is_resource_type(t))
            {
                return Err((
                    key("resource_types"),
                    format!("{unknown:?} is not an R4 resource type"),
                ));
            }
            if self.rate_limits.rules[..i]
                .iter()
                .any(|r| r.name == rule.name)
            {
                return Err((
                    key("name"),
                    format!("another rule is named {:?}", rule.name),
                ));
            }
            let problem = if rule.name.is_empty() {
                Some(("name", "must not be empty"))
            } else if rule.key.is_empty() {
                Some((
                    "key",
                    "name at least one of client_id, subject, patient, issuer, client_ip",
                ))
            } else if rule.rate == 0 {
                Some(("rate", "must be at least 1"))
            } else if rule.burst == 0 {
                Some(("burst", "must be at least 1"))
            } else if rule.per.is_zero() {
                Some(("per", "must be longer than zero"))
            } else {
                None
            };
            if let Some((field, message)) = problem {
                return Err((key(field), message.into()));
            }
        }
        for (i, issuer) in self.issuers.iter().enumerate() {
            let key = |k: &str| format!("issuers[{i}].{k}");
            if issuer.issuer.is_empty() {
                return Err((key("issuer"), "must not be empty".into()));
            }
            if issuer.audience.is_empty() {
                return Err((key("audience"), "must not be empty".into()));
            }
            if issuer.algorithms.is_empty() {
                return Err((
                    key("algorithms"),
                    "at least one algorithm is required".into(),
                ));
            }
            if issuer.dpop.algorithms.is_empty() {
                return Err((
                    key("dpop.algorithms"),
                    "at least one algorithm is required".into(),
                ));
            }
            if !issuer.jwt && issuer.introspection.is_none() {
                return Err((
                    key("jwt"),
                    "an issuer that accepts no JWTs needs introspection".into(),
                ));
            }
            let discovers = issuer.jwt && issuer.jwks_uri.is_none()
                || issuer
                    .introspection
                    .as_ref()
                    .is_some_and(|i| i.endpoint.is_none());
            if discovers && HttpUrl::parse(&issuer.issuer).is_err() {
                return Err((
                    key("issuer"),
                    "is not an http(s) URL, so discovery cannot find its endpoints: set jwks_uri (and introspection.endpoint)".into(),
                ));
            }
            let earlier = &self.issuers[..i];
            if earlier.iter().any(|other| other.issuer == issuer.issuer) {
                return Err((key("issuer"), "is configured twice".into()));
            }
        }
        if self.listen == self.admin_listen {
            return Err(("admin_listen".into(), "must differ from listen".into()));
        }
        for (i, op) in self.policy.operations.iter().enumerate() {
            let key = |k: &str| format!("policy.operations[{i}].{k}");
            let name_ok = !op.name.is_empty()
                && op
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !name_ok {
                return Err((key("name"), "must be an operation name without '$'".into()));
            }
            if let Some(ty) = &op.resource_type {
                if op.level == OperationLevel::System {
                    return Err((key("type"), "is not allowed at system level".into()));
                }
                if !fhirgate_policy::scope::is_resource_type(ty) {
                    return Err((key("type"), "is not an R4 resource type".into()));
                }
            }
            if !matches!(Perms::parse(&op.requires), Some((_, true))) {
                return Err((
                    key("requires"),
                    "must be SMART v2 letters in the order c r u d s, e.g. \"rs\"".into(),
                ));
            }
        }
        if self.limits.max_token_length < 64 {
            return Err((
                "limits.max_token_length".into(),
                "must be at least 64".into(),
            ));
        }
        self.limits.validate()?;
        self.validate_edge()
    }
}

impl Config {
    /// The policy options the decision takes on `route`: the operation table, how refused
    /// reads are answered, and the base URLs absolute Bundle entry URLs may name (the
    /// audiences the route accepts, which are its public FHIR base, its `public_url`, and its
    /// upstream's own base).
    pub fn route_policy_options(&self, route: &Route) -> PolicyOptions {
        let rules = self
            .policy
            .operations
            .iter()
            .map(|op| OperationRule {
                name: op.name.clone(),
                level: match op.level {
                    OperationLevel::System => policy::OperationLevel::System,
                    OperationLevel::Type => policy::OperationLevel::Type,
                    OperationLevel::Instance => policy::OperationLevel::Instance,
                },
                resource_type: op.resource_type.clone(),
                requires: Perms::parse(&op.requires).map_or(Perms::ALL, |(p, _)| p),
            })
            .collect();
        let audiences: Vec<&str> = match &route.audience {
            Some(audience) => vec![audience.as_str()],
            None => self.issuers.iter().map(|i| i.audience.as_str()).collect(),
        };
        let mut base_urls: Vec<String> = audiences
            .into_iter()
            .filter(|audience| HttpUrl::parse(audience).is_ok())
            .map(|audience| audience.trim_end_matches('/').to_owned())
            .collect();
        if let Some(url) = &route.public_url {
            base_urls.push(url.as_str());
        }
        base_urls.push(route.upstream.url.as_str());
        let mut seen = std::collections::HashSet::new();
        base_urls.retain(|url| seen.insert(url.clone()));
        PolicyOptions {
            operations: OperationPolicy { rules },
            read_refusal: match self.policy.refused_reads {
                RefusedReads::Forbidden => ReadRefusal::Forbidden,
                RefusedReads::NotFound => ReadRefusal::NotFound,
            },
            base_urls,
            batch_refusal: match self.policy.refused_batch_entries {
                RefusedBatchEntries::RefuseBatch => BatchRefusal::WholeBundle,
                RefusedBatchEntries::AnswerInBatch => BatchRefusal::PerEntry,
            },
        }
    }

    /// The policy options of the first route (the only one of an `upstream` section).
    pub fn policy_options(&self) -> PolicyOptions {
        match self.routes.first() {
            Some(route) => self.route_policy_options(route),
            None => PolicyOptions::default(),
        }
    }
}

impl HttpUrl {
    fn parse(text: &str) -> Result<Self, String> {
        let uri: http::Uri = text.parse().map_err(|e| format!("not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http" | "https") => {}
            _ => return Err("must be an http:// or https:// URL".into()),
        }
        if uri.authority().is_none() {
            return Err("must name a host".into());
        }
        if uri.query().is_some() || text.contains('#') {
            return Err("must not have a query or fragment".into());
        }
        let trimmed = text.trim_end_matches('/');
        let uri = trimmed.parse().map_err(|e| format!("not a URL: {e}"))?;
        Ok(Self(uri))
    }

    /// The URL as parsed.
    pub fn uri(&self) -> &http::Uri {
        &self.0
    }

    /// The URL's text, without a trailing `/`.
    pub fn as_str(&self) -> String {
        self.0.to_string().trim_end_matches('/').to_owned()
    }
}

impl<'de> Deserialize<'de> for HttpUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl BasePath {
    /// The path, empty for the root.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for BasePath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if !text.starts_with('/') {
            return Err(serde::de::Error::custom("must start with '/'"));
        }
        let trimmed = text.trim_end_matches('/');
        let clean = trimmed
            .split('/')
            .skip(1)
            .all(|s| !s.is_empty() && s != "." && s != ".." && s.bytes().all(is_path_byte));
        if !clean {
            return Err(serde::de::Error::custom(
                "must be a plain path: letters, digits, '-', '_', '.', no empty or dot segments",
            ));
        }
        Ok(Self(trimmed.to_owned()))
    }
}

fn is_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~')
}

pub(crate) fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text)
        .map_err(|e| serde::de::Error::custom(format!("not a duration such as \"30s\": {e}")))
}

pub(crate) fn option_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    duration(deserializer).map(Some)
}

fn default_true() -> bool {
    true
}
fn default_service_name() -> String {
    "fhirgate".to_owned()
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_response_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_leeway() -> Duration {
    Duration::from_secs(30)
}
fn default_refetch_cooldown() -> Duration {
    Duration::from_secs(30)
}
/// Networks given as CIDR blocks or single addresses (`10.0.0.1` is `10.0.0.1/32`).
fn networks<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
    let texts = Vec::<String>::deserialize(deserializer)?;
    texts
        .iter()
        .map(|text| {
            text.parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "{text:?} is neither an address nor a CIDR block"
                    ))
                })
        })
        .collect()
}

fn default_redis_timeout() -> Duration {
    Duration::from_millis(250)
}
fn default_redis_prefix() -> String {
    "fhirgate".to_owned()
}
fn default_min_refresh_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_refresh_interval() -> Duration {
    Duration::from_secs(300)
}
fn default_algorithms() -> Vec<Algorithm> {
    vec![Algorithm::RS256, Algorithm::ES256]
}
fn default_max_request_body() -> usize {
    16 * 1024 * 1024
}
fn default_max_checked_response() -> usize {
    64 * 1024 * 1024
}
fn default_request_body_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_upstream_requests() -> u32 {
    512
}
fn default_max_token_length() -> usize {
    16 * 1024
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_operations_are_read_strictly() {
        let with = |policy: &str| format!("{EMBEDDED_DEFAULT}policy:\n{policy}");
        let text = with(
            "  refused_reads: not-found\n  operations:\n    - name: validate\n      level: type\n      type: Observation\n      requires: c\n",
        );
        let config = Config::parse(&text, "f.yaml").unwrap();
        let options = config.policy_options();
        assert_eq!(options.read_refusal, ReadRefusal::NotFound);
        assert_eq!(options.operations.rules[0].requires, Perms::C);
        assert!(
            options
                .base_urls
                .contains(&"http://127.0.0.1:8080/fhir".to_owned())
        );
        for bad in [
            "  operations:\n    - name: validate\n      level: type\n      requires: cx\n",
            "  operations:\n    - name: $validate\n      level: type\n      requires: c\n",
            "  operations:\n    - name: x\n      level: system\n      type: Patient\n      requires: r\n",
            "  operations:\n    - name: x\n      level: galaxy\n      requires: r\n",
            "  operations:\n    - name: x\n      level: type\n      requires: r\n      extra: 1\n",
            "  refused_reads: maybe\n",
        ] {
            assert!(Config::parse(&with(bad), "f.yaml").is_err(), "{bad}");
        }
        let default = Config::embedded_default().policy_options();
        assert!(default.operations.rules.is_empty());
        assert_eq!(default.read_refusal, ReadRefusal::Forbidden);
    }

    #[test]
    fn a_file_of_another_configuration_version_is_refused_with_what_to_do() {
        let unversioned: String = EMBEDDED_DEFAULT
            .lines()
            .filter(|line| !line.starts_with("version:"))
            .map(|line| format!("{line}\n"))
            .collect();
        assert_eq!(Config::parse(&unversioned, "f.yaml").unwrap().version, None);
        assert_eq!(Config::embedded_default().version, Some(CONFIG_VERSION));
        let newer = format!("version: {}\n{unversioned}", CONFIG_VERSION + 1);
        let err = Config::parse(&newer, "f.yaml").unwrap_err().to_string();
        assert!(err.starts_with("f.yaml:1:1: version: "), "{err}");
        assert!(
            err.contains("reads version 1") && err.contains("CHANGELOG.md"),
            "{err}"
        );
        let not_a_number = format!("version: one\n{unversioned}");
        assert!(Config::parse(&not_a_number, "f.yaml").is_err());
    }

    #[test]
    fn the_admin_listener_is_on_loopback_unless_told_otherwise() {
        let without: String = EMBEDDED_DEFAULT
            .lines()
            .filter(|line| !line.starts_with("admin_listen:"))
            .map(|line| format!("{line}\n"))
            .collect();
        assert_ne!(without, EMBEDDED_DEFAULT);
        let config = Config::parse(&without, "f.yaml").unwrap();
        assert_eq!(config.admin_listen, "127.0.0.1:8081".parse().unwrap());
        assert!(config.admin_listen.ip().is_loopback());
    }

    #[test]
    fn embedded_default_parses() {
        let config = Config::embedded_default();
        assert_eq!(config.routes.len(), 1);
        assert_eq!(config.routes[0].name, "default");
        assert_eq!(config.routes[0].path.as_str(), "/fhir");
        assert_eq!(
            config.routes[0].upstream.url.as_str(),
            "http://127.0.0.1:8091/fhir"
        );
        assert_eq!(config.issuers[0].leeway, Duration::from_secs(30));
    }

    #[test]
    fn misspelt_key_names_key_and_line() {
        let text = EMBEDDED_DEFAULT.replace("  response_timeout:", "  respons_timeout:");
        let err = Config::parse(&text, "f.yaml").unwrap_err().to_string();
        assert!(err.contains("respons_timeout"), "{err}");
        let line = text
            .lines()
            .position(|l| l.contains("respons_timeout"))
            .unwrap()
            + 1;
        assert!(err.starts_with(&format!("f.yaml:{line}:")), "{err}");
    }

    #[test]
    fn bad_values_are_refused_with_position() {
        for (from, to) in [
            ("\"30s\"", "\"thirty\""),
            ("\"RS256\"", "\"HS256\""),
            ("\"http://127.0.0.1:8091/fhir\"", "\"ftp://x/fhir\""),
            ("\"/fhir\"", "\"fhir\""),
            ("\"127.0.0.1:8080\"", "\"localhost\""),
        ] {
            let text = EMBEDDED_DEFAULT.replacen(from, to, 1);
            let err = Config::parse(&text, "f.yaml").unwrap_err().to_string();
            assert!(err.starts_with("f.yaml:"), "{from} -> {to}: {err}");
            assert!(err.chars().nth(7).unwrap().is_ascii_digit(), "{err}");
        }
    }

    #[test]
    fn cross_key_rules_name_the_key() {
        let text = EMBEDDED_DEFAULT.replace("\"127.0.0.1:8081\"", "\"127.0.0.1:8080\"");
        let err = Config::parse(&text, "f.yaml").unwrap_err().to_string();
        assert!(err.contains("admin_listen"), "{err}");
    }

    #[test]
    fn telemetry_is_read_strictly_and_needs_the_otlp_feature_to_export() {
        let with = |section: &str| format!("{EMBEDDED_DEFAULT}telemetry:\n{section}");
        let config = Config::parse(&with("  service_name: \"gw-east\"\n"), "f").unwrap();
        assert_eq!(config.telemetry.service_name, "gw-east");
        assert!(config.telemetry.otlp_endpoint.is_none());
        assert_eq!(
            Config::embedded_default().telemetry.service_name,
            "fhirgate"
        );
        for bad in [
            "  otlp_endpont: \"http://127.0.0.1:4318\"\n",
            "  otlp_endpoint: \"grpc://127.0.0.1:4317\"\n",
            "  service_name: \" \"\n",
        ] {
            assert!(Config::parse(&with(bad), "f").is_err(), "{bad}");
        }
        let exporting = Config::parse(&with("  otlp_endpoint: \"http://127.0.0.1:4318/\"\n"), "f");
        if cfg!(feature = "otlp") {
            let endpoint = exporting.unwrap().telemetry.otlp_endpoint.unwrap();
            assert_eq!(endpoint.as_str(), "http://127.0.0.1:4318");
        } else {
            let error = exporting.unwrap_err().to_string();
            assert!(error.contains("telemetry.otlp_endpoint"), "{error}");
            assert!(error.contains("without the `otlp` feature"), "{error}");
        }
    }

    #[test]
    fn base_path_is_trimmed_and_checked() {
        let text = EMBEDDED_DEFAULT.replace("\"/fhir\"", "\"/api/fhir/\"");
        let config = Config::parse(&text, "f").unwrap();
        assert_eq!(config.routes[0].path.as_str(), "/api/fhir");
        let text = EMBEDDED_DEFAULT.replace("\"/fhir\"", "\"/a/../fhir\"");
        assert!(Config::parse(&text, "f").is_err());
    }
}
