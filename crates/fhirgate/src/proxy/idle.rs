//! The idle timeout: a connection with no request in progress and nothing read or written
//! for `limits.connections.idle_timeout` is ended as if the client had closed it.
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

/// A connection's stream, ended once it has been idle for the timeout.
pub struct IdleIo<S> {
    inner: S,
    in_flight: Arc<InFlight>,
    timeout: Duration,
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
        timeout: Duration,
        in_flight: Arc<InFlight>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let now = Instant::now();
        Self {
            inner,
            in_flight,
            timeout,
            last_active: now,
            deadline: Box::pin(tokio::time::sleep_until(now + timeout)),
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
            let due = self.last_active + self.timeout;
            if due <= now {
                self.expired = true;
                self.metrics.limit_hit(Limit::IdleTimeout);
                tracing::debug!(timeout = ?self.timeout, "idle connection closed");
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
        let mut io = IdleIo::new(
            server,
            Duration::from_millis(50),
            in_flight.clone(),
            metrics.clone(),
        );
        let mut client = client;
        let request = in_flight.start();
        client.write_all(b"x").await.unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(io.read(&mut buf).await.unwrap(), 1);
        // Busy: a read waits past the timeout without ending the stream.
        let waited = tokio::time::timeout(Duration::from_secs(30), io.read(&mut buf)).await;
        assert!(
            waited.is_err(),
            "the stream ended while a request was in progress"
        );
        drop(request);
        assert_eq!(io.read(&mut buf).await.unwrap(), 0, "end of stream");
        assert!(
            metrics
                .encode()
                .contains(r#"fhirgate_limit_hits_total{limit="idle_timeout"} 1"#)
        );
    }
}
