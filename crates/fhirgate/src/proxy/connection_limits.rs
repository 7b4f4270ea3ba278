//! Limits on client connections: how many may be open at once, and what hyper lets each one
//! hold (HTTP/1.1 head timeout and size, HTTP/2 streams, header lists and resets).
//!
//! Over `max_open`, a new connection is accepted and closed at once rather than left in the
//! listen backlog: the client learns straight away, and a load balancer can send it
//! elsewhere.

use std::error::Error;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::ConnectionLimits;
use crate::metrics::{Limit, Metrics};

/// The HTTP/1.1 and HTTP/2 connection builder for `limits`.
pub fn builder(limits: &ConnectionLimits) -> auto::Builder<TokioExecutor> {
    let header_bytes = usize::try_from(limits.max_header_bytes).unwrap_or(usize::MAX);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(header_bytes)
        .max_headers(usize::try_from(limits.max_headers).unwrap_or(usize::MAX));
    let http2 = &limits.http2;
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(http2.max_concurrent_streams)
        .max_header_list_size(limits.max_header_bytes)
        .max_pending_accept_reset_streams(
            usize::try_from(http2.max_pending_accept_reset_streams).unwrap_or(usize::MAX),
        )
        .max_local_error_reset_streams(
            usize::try_from(http2.max_local_error_reset_streams).unwrap_or(usize::MAX),
        );
    builder
}

/// Admits client connections up to `max_open` at once.
#[derive(Debug, Clone)]
pub struct ConnectionGate {
    slots: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl ConnectionGate {
    pub fn new(max_open: u32, metrics: Arc<Metrics>) -> Self {
        let slots = usize::try_from(max_open)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        Self {
            slots: Arc::new(Semaphore::new(slots)),
            metrics,
        }
    }

    /// A slot for a connection just accepted, or `None` when `max_open` are open (the
    /// connection is then to be closed). Counted either way.
    pub fn admit(&self) -> Option<Admitted> {
        let slot = self.slots.clone().try_acquire_owned().ok();
        self.metrics.connection_accepted(slot.is_some());
        slot.map(|slot| Admitted {
            _slot: slot,
            metrics: self.metrics.clone(),
        })
    }
}

/// An open connection's slot, given back when the connection closes.
#[derive(Debug)]
pub struct Admitted {
    _slot: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.metrics.connection_closed();
    }
}

/// The limit that ended a connection with `error`, if one did.
pub fn limit_of(error: &(dyn Error + 'static)) -> Option<Limit> {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(error) = error.downcast_ref::<hyper::Error>() {
            if error.is_timeout() {
                return Some(Limit::HeaderReadTimeout);
            }
            if error.is_parse_too_large() {
                return Some(Limit::HeaderSize);
            }
        }
        if let Some(error) = error.downcast_ref::<h2::Error>()
            && error.is_go_away()
            && error.is_library()
            && error.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM)
        {
            return Some(Limit::Http2Abuse);
        }
        cause = error.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_over_the_cap_are_refused_until_one_closes() {
        let metrics = Arc::new(Metrics::default());
        let gate = ConnectionGate::new(2, metrics.clone());
        let first = gate.admit().expect("first admitted");
        let _second = gate.admit().expect("second admitted");
        assert!(gate.admit().is_none());
        drop(first);
        assert!(gate.admit().is_some());
        let text = metrics.encode();
        for line in [
            "fhirgate_connections_accepted_total 4",
            "fhirgate_connections_refused_total 1",
            "fhirgate_connections_open 1",
        ] {
            assert!(text.contains(line), "missing {line} in:\n{text}");
        }
    }

    #[test]
    fn errors_that_are_no_limit_name_none() {
        let error = std::io::Error::other("reset by peer");
        assert_eq!(limit_of(&error), None);
    }
}
