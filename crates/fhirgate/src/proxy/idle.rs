//! The idle timeout: a connection with no request in progress and nothing read or written
//! for `limits.connections.idle_timeout` is ended as if the client had closed it. A
//! connection on which the client has sent nothing at all gets no longer than
//! `header_read_timeout`, before either protocol has started.
//!
//! [`IdleIo`] wraps the connection's stream: every read or write that moves bytes marks the
//! connection active, and once the deadline passes with no request in progress its next
//! read is the end of the stream, and hyper closes the connection as one whose client went
//! away between requests.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::metrics::{Limit, Metrics};

/// Requests in progress on one connection.
#[derive(Debug, Default)]
pub struct InFlight(AtomicUsize);

impl InFlight {
    /// Marks a request in progress until the returned guard is dropped.
    pub fn start(self: &Arc<Self>) -> RequestInProgress {
        self.0.fetch_add(1, Ordering::Relaxed);
        RequestInProgress(self.clone())
    }

    fn any(&self) -> bool {
        self.0.load(Ordering::Relaxed) > 0
    }
}

/// A request in progress on its connection.
#[derive(Debug)]
pub struct RequestInProgress(Arc<InFlight>);

impl Drop for RequestInProgress {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How long a connection may stay idle.
#[derive(Debug, Clone, Copy)]
pub struct IdleTimeouts {
    /// Before the client has sent its first byte.
    pub silent: Duration,
    /// Afterwards.
    pub idle: Duration,
}

/// A connection's stream, ended once it has been idle for the timeout.
pub struct IdleIo<S> {
    inner: S,
    in_flight: Arc<InFlight>,
    timeouts: IdleTimeouts,
    /// Whether the client has sent anything yet.
    heard: bool,
    /// When bytes last moved.
    last_active: Instant,
    /// Fires at `last_active + timeout` or later; moved on when it finds activity since.
    deadline: Pin<Box<Sleep>>,
    metrics: Arc<Metrics>,
    expired: bool,
}

impl<S> IdleIo<S> {
    pub fn new(
        inner: S,
        timeouts: IdleTimeouts,
        in_flight: Arc<InFlight>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let now = Instant::now();
        Self {
            inner,
            in_flight,
            timeouts,
            heard: false,
            last_active: now,
            deadline: Box::pin(tokio::time::sleep_until(now + timeouts.silent)),
            metrics,
            expired: false,
        }
    }

    /// Whether the connection has been idle for the timeout; arms the deadline's wake-up
    /// otherwise.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.expired {
            return true;
        }
        while self.deadline.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            if self.in_flight.any() {
                self.last_active = now;
            }
            let (timeout, limit) = if self.heard {
                (self.timeouts.idle, Limit::IdleTimeout)
            } else {
                (self.timeouts.silent, Limit::HeaderReadTimeout)
            };
            let due = self.last_active + timeout;
            if due <= now {
                self.expired = true;
                self.metrics.limit_hit(limit);
                tracing::debug!(?timeout, limit = limit.as_str(), "idle connection closed");
                return true;
            }
            self.deadline.as_mut().reset(due);
        }
        false
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.expired {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.last_active = Instant::now();
                    if !this.heard {
                        // From now on the idle timeout counts, however the deadline was set.
                        this.heard = true;
                        let due = this.last_active + this.timeouts.idle;
                        this.deadline.as_mut().reset(due);
                    }
                }
                Poll::Ready(result)
            }
            Poll::Pending if this.idle_expired(cx) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            this.last_active = Instant::now();
        }
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            this.last_active = Instant::now();
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[tokio::test]
    async fn an_idle_stream_ends_after_the_timeout_but_not_while_a_request_is_in_progress() {
        let (client, server) = tokio::io::duplex(64);
        let in_flight = Arc::new(InFlight::default());
        let metrics = Arc::new(Metrics::default());
        let timeouts = IdleTimeouts {
            silent: Duration::from_secs(3600),
            idle: Duration::from_millis(50),
        };
        let mut io = IdleIo::new(server, timeouts, in_flight.clone(), metrics.clone());
        let mut client = client;
        let request = in_flight.start();
        client.write_all(b"x").await.unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(io.read(&mut buf).await.unwrap(), 1);
        // Busy: a read waits well past the timeout without ending the stream.
        let waited = tokio::time::timeout(Duration::from_millis(500), io.read(&mut buf)).await;
        assert!(
            waited.is_err(),
            "the stream ended while a request was in progress"
        );
        drop(request);
        let ended = tokio::time::timeout(Duration::from_secs(10), io.read(&mut buf)).await;
        assert_eq!(ended.expect("ends once idle").unwrap(), 0, "end of stream");
        assert!(
            metrics
                .encode()
                .contains(r#"fhirgate_limit_hits_total{limit="idle_timeout"} 1"#)
        );
    }

    #[tokio::test]
    async fn a_client_that_never_sends_gets_the_silent_timeout() {
        let (_client, server) = tokio::io::duplex(64);
        let metrics = Arc::new(Metrics::default());
        let timeouts = IdleTimeouts {
            silent: Duration::from_millis(50),
            idle: Duration::from_secs(3600),
        };
        let mut io = IdleIo::new(server, timeouts, Arc::default(), metrics.clone());
        let mut buf = [0u8; 8];
        let ended = tokio::time::timeout(Duration::from_secs(10), io.read(&mut buf)).await;
        assert_eq!(
            ended.expect("ends while silent").unwrap(),
            0,
            "end of stream"
        );
        let text = metrics.encode();
        assert!(text.contains(r#"fhirgate_limit_hits_total{limit="header_read_timeout"} 1"#));
        assert!(text.contains(r#"fhirgate_limit_hits_total{limit="idle_timeout"} 0"#));
    }
}
