//! The route step: which FHIR API a request is for. Each route has its public base path (and
//! optionally a host), its upstream, the audience its tokens must name, and what the
//! gateway keeps per FHIR API (the CapabilityStatement, the base URL rewrites, the policy's
//! base URLs). The longest matching base path wins, a route for the request's host before one
//! for any host; a request matching none is answered 404.

use std::sync::Arc;

use fhirgate_policy::options::PolicyOptions;
use http::{HeaderMap, Uri, header};

use super::metadata::MetadataCache;
use super::rewrite::RewriteCache;
use super::upstream::Upstream;
use super::upstream_slots::UpstreamSlots;
use super::upstream_tls::UpstreamSetupError;
use crate::config::{Config, strip_port, under_base_path as under};
use crate::metrics::{Metrics, Route as RouteName};

/// One FHIR API behind the gateway.
#[derive(Debug)]
pub struct Route {
    /// The route's name in metrics, audit records and logs.
    pub name: RouteName,
    /// The public base path, empty for the root.
    pub base_path: String,
    /// The host the route is for (lower case), any when `None`.
    host: Option<String>,
    /// The audience its tokens must name; the issuer's `audience` when `None`.
    pub audience: Option<String>,
    /// The public FHIR base URL, when configured (else made per request).
    pub public_url: Option<String>,
    /// Send the caller's identity upstream in `X-Fhirgate-*` headers.
    pub identity_headers: bool,
    /// The upstream's own FHIR base URL.
    pub upstream_base: String,
    pub upstream: Upstream,
    /// The policy options of requests on this route.
    pub policy: PolicyOptions,
    /// The upstream's CapabilityStatement.
    pub metadata: MetadataCache,
    /// The base URL rewrites for the public base seen last.
    pub rewrites: RewriteCache,
}

/// Every route, in the order they are matched.
#[derive(Debug)]
pub struct Routes {
    routes: Vec<Route>,
}

impl Routes {
    /// The routes of `config`, their upstreams counting into `metrics`.
    pub fn new(config: &Config, metrics: &Arc<Metrics>) -> Result<Self, UpstreamSetupError> {
        let mut routes = Vec::with_capacity(config.routes.len());
        for (i, route) in config.routes.iter().enumerate() {
            let name = RouteName::named(&route.name);
            let at = match config.upstream {
                Some(_) => "upstream".to_owned(),
                None => format!("routes[{i}].upstream"),
            };
            let upstream = Upstream::new(&route.upstream, name, &at, metrics.clone())?;
            metrics.declare_route(name);
            routes.push(Route {
                name,
                base_path: route.path.as_str().to_owned(),
                host: route.host.as_ref().map(|h| h.to_ascii_lowercase()),
                audience: route.audience.clone(),
                public_url: route.public_url.as_ref().map(|u| u.as_str()),
                identity_headers: route.upstream.identity_headers,
                upstream_base: route.upstream.url.as_str(),
                upstream,
                policy: config.route_policy_options(route),
                metadata: MetadataCache::new(config.metadata.cache_ttl),
                rewrites: RewriteCache::default(),
            });
        }
        // The longest base path first; of two with the same path, the one for a host.
        routes.sort_by_key(|r| (std::cmp::Reverse(r.base_path.len()), r.host.is_none()));
        Ok(Self { routes })
    }

    /// Every upstream sends its requests within `slots`, the process's cap on requests at
    /// the FHIR servers.
    pub fn share_slots(&mut self, slots: &UpstreamSlots) {
        for route in &mut self.routes {
            route.upstream.share_slots(slots.clone());
        }
    }

    /// Starts every upstream's health checks.
    pub fn start_health_checks(&mut self) {
        for route in &mut self.routes {
            route.upstream.start_health_checks();
        }
    }

    /// The route a request with these headers for this URI takes, if any.
    pub fn find(&self, headers: &HeaderMap, uri: &Uri) -> Option<&Route> {
        let path = uri.path();
        if let [only] = &*self.routes
            && only.host.is_none()
        {
            return under(path, &only.base_path).then_some(only);
        }
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| uri.authority().map(|a| a.as_str()))
            .map(strip_port);
        self.routes.iter().find(|route| {
            under(path, &route.base_path)
                && route
                    .host
                    .as_deref()
                    .is_none_or(|want| host.is_some_and(|h| h.eq_ignore_ascii_case(want)))
        })
    }

    /// Every route.
    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }

    /// Every server of every route, as metrics name them.
    pub fn servers(&self) -> Vec<(RouteName, String)> {
        self.routes
            .iter()
            .flat_map(|route| {
                route
                    .upstream
                    .server_names()
                    .map(move |server| (route.name, server.to_owned()))
            })
            .collect()
    }
}
