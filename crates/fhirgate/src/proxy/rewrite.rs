//! Base URL rewriting: the upstream's own base URL never reaches a client, and the gateway's
//! public base never reaches the upstream.
//!
//! FHIR servers write absolute URLs of their own base into responses (`Bundle.link`,
//! `entry.fullUrl`, references, `Location`, `Link`). Behind the gateway that base is an
//! internal address; clients must see (and follow) the public one. The replacement is
//! byte-level, of the plain form, the `\/`-escaped form some JSON writers use, and the form with
//! `:` and `/` percent-encoded (a search value echoed in paging links). Towards clients
//! ([`Rewrite::hiding`]) the upstream's base is replaced wherever it appears; towards the
//! upstream ([`Rewrite::new`]) the public base only where it stands as a whole URL prefix:
//! followed by `/`, `?`, `#`, a quote, `<`, `%`, `&`, whitespace, the end of the text, or
//! (JSON-escaped) `\/`. Bodies are rewritten while they stream, without buffering them whole.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderValue;
use http_body::{Body as HttpBody, Frame};
use memchr::memmem;

use crate::body::{Body, BodyError};

/// One base URL replaced by another, in both its plain and JSON-escaped forms.
#[derive(Debug, Clone)]
pub struct Rewrite {
    pairs: Vec<Pair>,
    /// The longest run of the base without `:` or `/`: every form of the base holds it as
    /// it is, so one search for it finds every candidate of every form.
    anchor: Option<memmem::Finder<'static>>,
    /// Replace only where the base stands as a whole URL prefix; when false, wherever it
    /// appears (what reaches a client: any text naming the upstream's base is hidden).
    bounded: bool,
    /// Longest pattern, minus one: bytes held back between chunks of a stream.
    keep: usize,
}

/// A pattern, its replacement, and the searcher made for the pattern once.
#[derive(Debug, Clone)]
struct Pair {
    from: Vec<u8>,
    to: Vec<u8>,
    finder: memmem::Finder<'static>,
    /// Where the anchor first stands in `from`, when there is an anchor.
    anchor_at: usize,
}

impl Pair {
    fn new(from: Vec<u8>, to: Vec<u8>) -> Self {
        let finder = memmem::Finder::new(&from).into_owned();
        Self {
            from,
            to,
            finder,
            anchor_at: 0,
        }
    }
}

impl Rewrite {
    /// Replaces `from` (a base URL without trailing `/`) with `to`. `None` when they are the
    /// same, so nothing needs doing.
    pub fn new(from: &str, to: &str) -> Option<Self> {
        let (from, to) = (from.trim_end_matches('/'), to.trim_end_matches('/'));
        if from == to || from.is_empty() {
            return None;
        }
        let mut pairs = vec![Pair::new(from.as_bytes().to_vec(), to.as_bytes().to_vec())];
        let mut add = |from: String, to: String| {
            if !pairs.iter().any(|p| p.from == from.as_bytes()) {
                pairs.push(Pair::new(from.into_bytes(), to.into_bytes()));
            }
        };
        // JSON writers that escape `/`, and query values that carry the base percent-encoded
        // (a server echoing a search parameter in its paging links).
        add(from.replace('/', "\\/"), to.replace('/', "\\/"));
        add(percent_encoded(from, false), percent_encoded(to, false));
        add(percent_encoded(from, true), percent_encoded(to, true));
        let keep = pairs.iter().map(|p| p.from.len()).max().unwrap_or(1);
        // `:` and `/` are all the forms change, so the runs between them stand unchanged in
        // each form.
        let run = from
            .split([':', '/'])
            .max_by_key(|run| run.len())
            .filter(|run| !run.is_empty());
        let anchor = run.and_then(|run| {
            for pair in &mut pairs {
                pair.anchor_at = memmem::find(&pair.from, run.as_bytes())?;
            }
            Some(memmem::Finder::new(run.as_bytes()).into_owned())
        });
        Some(Self {
            pairs,
            anchor,
            bounded: true,
            keep,
        })
    }

    /// Like [`Rewrite::new`], but replacing `from` wherever it appears, not only as a whole
    /// URL prefix: for what goes to clients, who must never see the upstream's base.
    pub fn hiding(from: &str, to: &str) -> Option<Self> {
        Self::new(from, to).map(|rewrite| Self {
            bounded: false,
            ..rewrite
        })
    }

    /// The text with every whole-prefix occurrence replaced; `None` when there is none.
    pub fn apply(&self, text: &[u8]) -> Option<Vec<u8>> {
        self.apply_until(text, text.len(), true).map(|(out, _)| out)
    }

    /// Replaces occurrences that start before `limit`; the end of `text` counts as a boundary
    /// when `at_end`. Returns the rewritten prefix up to the last position it is sure of, and
    /// how many input bytes that prefix covers; `None` when nothing was replaced and every
    /// byte up to `limit` can go out as it is.
    fn apply_until(&self, text: &[u8], limit: usize, at_end: bool) -> Option<(Vec<u8>, usize)> {
        let mut hits: Vec<(usize, usize)> = Vec::new();
        let bounded = |at: usize, pair: &Pair| {
            let end = at + pair.from.len();
            !self.bounded
                || match text.get(end) {
                    Some(&next) => is_boundary(next, text.get(end + 1).copied()),
                    None => at_end,
                }
        };
        match &self.anchor {
            // One pass: each place the anchor stands is checked against every form. A form
            // found at `at` holds its first anchor at `at + anchor_at`, so none is missed.
            Some(anchor) => {
                let mut from = 0;
                while let Some(found) = anchor.find(&text[from..]) {
                    let seen = from + found;
                    from = seen + 1;
                    for (index, pair) in self.pairs.iter().enumerate() {
                        let Some(at) = seen.checked_sub(pair.anchor_at) else {
                            continue;
                        };
                        if at < limit && text[at..].starts_with(&pair.from) && bounded(at, pair) {
                            hits.push((at, index));
                        }
                    }
                }
            }
            None => {
                for (index, pair) in self.pairs.iter().enumerate() {
                    for at in pair.finder.find_iter(text) {
                        if at >= limit {
                            break;
                        }
                        if bounded(at, pair) {
                            hits.push((at, index));
                        }
                    }
                }
            }
        }
        if hits.is_empty() {
            return None;
        }
        hits.sort_unstable();
        let mut out = Vec::with_capacity(text.len() + 64);
        let mut copied = 0;
        for (at, index) in hits {
            if at < copied {
                continue;
            }
            let pair = &self.pairs[index];
            out.extend_from_slice(&text[copied..at]);
            out.extend_from_slice(&pair.to);
            copied = at + pair.from.len();
        }
        let covered = copied.max(limit.min(text.len()));
        out.extend_from_slice(&text[copied..covered]);
        Some((out, covered))
    }

    /// A header value with the base replaced wherever it stands (as in a body).
    pub fn header_value(&self, value: &HeaderValue) -> Option<HeaderValue> {
        let replaced = self.apply(value.as_bytes())?;
        HeaderValue::from_bytes(&replaced).ok()
    }

    /// A body rewritten as it streams.
    pub fn stream(self: Arc<Self>, body: Body) -> Body {
        http_body_util::BodyExt::boxed_unsync(Rewriting {
            rewrite: self,
            inner: body,
            held: BytesMut::new(),
            done: false,
            trailers: None,
        })
    }
}

/// The rewrites of one request: the upstream's base to the public one in what comes back, the
/// public base to the upstream's in what goes there.
#[derive(Debug, Clone, Default)]
pub struct Rewrites {
    pub to_client: Option<Arc<Rewrite>>,
    pub to_upstream: Option<Arc<Rewrite>>,
}

impl Rewrites {
    pub fn between(upstream: &str, public: &str) -> Self {
        Self {
            to_client: Rewrite::hiding(upstream, public).map(Arc::new),
            to_upstream: Rewrite::new(public, upstream).map(Arc::new),
        }
    }

    /// A request body or query as the upstream should see it; `None` when unchanged.
    pub fn outbound(&self, data: &[u8]) -> Option<Vec<u8>> {
        self.to_upstream.as_ref()?.apply(data)
    }
}

/// The rewrites for the public base seen last, kept: nearly every request names the same
/// base, and making the searchers costs more than searching a body.
#[derive(Debug, Default)]
pub struct RewriteCache {
    last: arc_swap::ArcSwapOption<(String, Rewrites)>,
}

impl RewriteCache {
    /// The rewrites between the upstream's base (`upstream` gives it, the same on every call;
    /// asked only when the rewrites are made) and `public`.
    pub fn get(&self, upstream: impl FnOnce() -> String, public: String) -> Rewrites {
        if let Some(last) = self.last.load().as_ref()
            && last.0 == public
        {
            return last.1.clone();
        }
        let made = Rewrites::between(&upstream(), &public);
        self.last.store(Some(Arc::new((public, made.clone()))));
        made
    }
}

/// `text` with `:` and `/` percent-encoded, in upper or lower case hex digits.
fn percent_encoded(text: &str, lower: bool) -> String {
    let (colon, slash) = if lower {
        ("%3a", "%2f")
    } else {
        ("%3A", "%2F")
    };
    text.replace(':', colon).replace('/', slash)
}

/// Whether the byte after a base URL ends it as a prefix (`next` is the byte after that).
fn is_boundary(byte: u8, next: Option<u8>) -> bool {
    match byte {
        b'/' | b'?' | b'#' | b'"' | b'\'' | b'<' | b'>' | b')' | b',' | b'%' | b'&' => true,
        b'\\' => matches!(next, Some(b'/' | b'"' | b'u')),
        byte => byte.is_ascii_whitespace(),
    }
}

/// A body whose data frames are rewritten, with the bytes that could start a base held back
/// until the next frame shows how they go on.
struct Rewriting {
    rewrite: Arc<Rewrite>,
    inner: Body,
    held: BytesMut,
    done: bool,
    /// Trailers seen after the data, sent once the held bytes are out.
    trailers: Option<Frame<Bytes>>,
}

impl Rewriting {
    /// What can go out of the held bytes now; all of it at the end.
    fn release(&mut self, at_end: bool) -> Option<Bytes> {
        if self.held.is_empty() {
            return None;
        }
        // Two bytes of look-ahead decide a boundary, so that much more stays back.
        let hold = if at_end { 0 } else { self.rewrite.keep + 2 };
        let limit = self.held.len().saturating_sub(hold);
        if limit == 0 && !at_end {
            return None;
        }
        let (out, covered) = match self.rewrite.apply_until(&self.held, limit, at_end) {
            Some(found) => found,
            None => (self.held[..limit].to_vec(), limit),
        };
        let _ = self.held.split_to(covered);
        (!out.is_empty()).then(|| Bytes::from(out))
    }
}

impl HttpBody for Rewriting {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        loop {
            if self.done {
                if let Some(data) = self.release(true) {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                return Poll::Ready(self.trailers.take().map(Ok));
            }
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => self.done = true,
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        self.held.extend_from_slice(&data);
                        // The last frame (a known length reached): everything can go now.
                        if self.inner.is_end_stream() {
                            self.done = true;
                            continue;
                        }
                        if let Some(out) = self.release(false) {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    // Trailers end the data: what is held goes first.
                    Err(trailers) => {
                        self.trailers = Some(trailers);
                        self.done = true;
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests;
