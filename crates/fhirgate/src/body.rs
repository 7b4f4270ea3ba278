//! The one response body type: a stream passed through, or bytes the gateway made.

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full};

/// Errors while streaming a body.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// Any response body the gateway sends.
pub type Body = UnsyncBoxBody<Bytes, BodyError>;

/// A body of known bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An upstream body passed through as it streams.
pub fn stream(incoming: hyper::body::Incoming) -> Body {
    incoming.map_err(BodyError::from).boxed_unsync()
}
