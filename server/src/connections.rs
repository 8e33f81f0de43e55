//! Accepting and serving HTTP/1.1 connections, plain or over TLS: the cap on
//! open connections (`--max-connections`), the header and idle timeouts (a
//! TLS handshake must also finish within the header timeout), the limits on
//! request heads, and graceful shutdown of every open connection.
//!
//! Timeouts follow Go's `net/http` model. A new connection must deliver a
//! complete request head within the header timeout. Between two requests of a
//! keep-alive connection, the client has the idle timeout to start the next
//! one, and from its first byte the header timeout to complete the head. A
//! request being answered (a long-poll, a subscription) is never timed out
//! here. Both clocks run in hyper's header-read timer, which hyper arms while
//! it waits for a request head; `HeadTimer` gives it the deadlines above,
//! using the byte counts that `CountedIo` keeps.
//!
//! A response, though, may not wait forever on a client that reads none of
//! it: each pending write holds the connection and whatever hyper buffered
//! (up to a page of 16 MiB). When a write makes no progress for the write
//! stall timeout, `CountedIo` fails it and the connection closes. A client
//! reading slowly but steadily is not cut off.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::http::Api;
use crate::metrics::{GaugeGuard, Metrics};
use crate::tls::Tls;

/// Largest request head (request line and headers); a larger one is answered
/// 431 by hyper and the connection closed.
pub const MAX_HEAD_BYTES: usize = 64 << 10;
/// Most headers in one request; more are answered 431.
pub const MAX_HEADERS: usize = 100;
/// Connections over the cap answered 503 at once; past this many, further ones
/// are closed without an answer (answering costs a task and a descriptor for
/// up to `REJECT_LINGER`).
const MAX_REJECTING: usize = 64;
/// How long an over-the-cap connection is kept to deliver its 503.
const REJECT_LINGER: Duration = Duration::from_secs(1);

/// File descriptors kept for everything but client connections: RocksDB's
/// files, the listener, the log.
pub const RESERVED_FDS: u64 = 256;

/// Raises the soft limit on open files to the hard limit (as Go and most
/// servers do) and warns when it still cannot hold `max_connections` plus the
/// reserve: past it, accepts fail and new clients wait.
pub fn raise_fd_limit(max_connections: usize) {
    let needed = max_connections as u64 + RESERVED_FDS;
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < needed => tracing::warn!(
            limit,
            needed,
            "the open-file limit is below --max-connections plus {RESERVED_FDS}; raise it (ulimit -n, LimitNOFILE=) or lower --max-connections"
        ),
        Ok(limit) => tracing::debug!(limit, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the open-file limit"),
    }
}

/// The limits of this module, from the flags.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub write_stall_timeout: Duration,
}

/// Accepts connections until `stop` is cancelled, serving each on a task of
/// `tracker`; on `stop`, open connections finish the request they are
/// answering and close. Returns once no more connections are accepted: the
/// caller waits on `tracker` (with its own time limit). With `tls`, every
/// connection is HTTPS, with the acceptor in force when it was accepted.
pub async fn serve(
    listener: TcpListener,
    app: Api,
    limits: ConnectionLimits,
    tls: Option<Arc<Tls>>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let rejecting = Arc::new(Semaphore::new(MAX_REJECTING));
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    on_accept_error(&e, &metrics).await;
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            metrics.connections_rejected.inc();
            if tls.is_none() {
                reject(stream, &rejecting);
            } // A TLS client cannot read a plain answer: closed unanswered.
            continue;
        };
        let (app, metrics, stop) = (app.clone(), Arc::clone(&metrics), stop.clone());
        let acceptor = tls.as_ref().map(|tls| tls.acceptor());
        tracker.spawn(async move {
            let _permit = permit;
            let _open = GaugeGuard::new(&metrics.connections);
            match acceptor {
                None => serve_connection(stream, app, limits, &metrics, stop).await,
                Some(acceptor) => {
                    let handshake = tokio::select! {
                        () = stop.cancelled() => return,
                        done = tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)) => done,
                    };
                    match handshake {
                        Ok(Ok(stream)) => serve_connection(stream, app, limits, &metrics, stop).await,
                        Ok(Err(e)) => {
                            metrics.tls_handshake_failures.inc();
                            tracing::debug!(error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            metrics.connections_timed_out.inc();
                            tracing::debug!("connection closed: no TLS handshake in time");
                        }
                    }
                }
            }
        });
    }
}

async fn serve_connection<S>(
    stream: S,
    app: Api,
    limits: ConnectionLimits,
    metrics: &Metrics,
    stop: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let counts = Arc::new(IoCounts::default());
    let io = TokioIo::new(CountedIo {
        inner: stream,
        counts: Arc::clone(&counts),
        stall_timeout: limits.write_stall_timeout,
        stall: None,
    });
    let timer = HeadTimer {
        counts: Arc::clone(&counts),
        header_timeout: limits.header_timeout,
        idle_timeout: limits.idle_timeout,
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(timer)
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_header_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS);
    let connection = builder.serve_connection(io, app);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        if counts.write_stalled.load(Ordering::Relaxed) {
            metrics.connections_write_stalled.inc();
            tracing::debug!("connection closed: the client read none of a response in time");
        } else if e.is_timeout() {
            metrics.connections_timed_out.inc();
            tracing::debug!("connection closed: no complete request head in time");
        } else {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }
}

/// Accept errors are the listener's, not a client's: connections reset before
/// they were accepted are skipped; anything else (out of file descriptors) is
/// logged and retried after a pause, so a full table does not spin.
async fn on_accept_error(e: &io::Error, metrics: &Metrics) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    metrics.accept_errors.inc();
    tracing::warn!(error = %e, "cannot accept a connection (out of file descriptors?); retrying in 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// The answer to a connection over `--max-connections`.
fn over_cap_response() -> String {
    let body = r#"{"error":"too_many_connections","message":"the server holds as many connections as --max-connections allows; retry later"}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Answers an over-the-cap connection 503 and closes it: the answer goes out
/// at once, then the connection lingers (at most `REJECT_LINGER`) until the
/// client closes, so closing never resets it before it read the answer.
fn reject(mut stream: TcpStream, rejecting: &Arc<Semaphore>) {
    let Ok(permit) = Arc::clone(rejecting).try_acquire_owned() else {
        return; // dropped: closed unanswered
    };
    tokio::spawn(async move {
        let _permit = permit;
        let _ = tokio::time::timeout(REJECT_LINGER, async {
            stream.write_all(over_cap_response().as_bytes()).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 4096];
            while stream.read(&mut sink).await? > 0 {}
            io::Result::Ok(())
        })
        .await;
    });
}

/// Bytes a connection has read and written so far.
#[derive(Debug, Default)]
struct IoCounts {
    read: AtomicU64,
    written: AtomicU64,
    /// A write was failed for making no progress within the stall timeout.
    write_stalled: std::sync::atomic::AtomicBool,
}

/// A connection (TCP, or TLS's plaintext side) that counts its bytes (for
/// `HeadTimer`) and fails a write that makes no progress for `stall_timeout`.
struct CountedIo<S> {
    inner: S,
    counts: Arc<IoCounts>,
    stall_timeout: Duration,
    /// Armed while writes are pending, from the first one that was; cleared
    /// when one makes progress.
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> CountedIo<S> {
    /// Passes a write's (or flush's) outcome on, but fails it once writes
    /// have stayed pending for the stall timeout.
    fn unless_stalled<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stall = None;
            return polled;
        }
        let timeout = self.stall_timeout;
        let stall = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if stall.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.counts.write_stalled.store(true, Ordering::Relaxed);
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client read none of the response within the write stall timeout",
        )))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for CountedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        self.counts.read.fetch_add(read, Ordering::Relaxed);
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CountedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.counts.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        self.unless_stalled(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            self.counts.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        self.unless_stalled(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.unless_stalled(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// hyper's header-read timer for one connection (see the module docs). hyper
/// arms it each time it starts waiting for a request head.
#[derive(Clone)]
struct HeadTimer {
    counts: Arc<IoCounts>,
    header_timeout: Duration,
    idle_timeout: Duration,
}

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HeadSleep::fixed(Instant::now() + duration))
    }

    fn sleep_until(&self, _deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        // hyper asks for `now + header_timeout`; the deadline depends on
        // whether this is the connection's first request and on when the
        // head's first byte arrives, so it is worked out here.
        Box::pin(HeadSleep::waiting_for_head(self))
    }
}

/// The timeout for one request head.
struct HeadSleep {
    counts: Option<Arc<IoCounts>>,
    header_timeout: Duration,
    idle_timeout: Duration,
    /// When hyper started waiting.
    started: Instant,
    /// Bytes read when hyper started waiting.
    read_at_start: u64,
    /// Whether an answer went out before: the wait is a keep-alive idle one.
    keep_alive: bool,
    /// When the head's first byte was seen.
    first_byte: Option<Instant>,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl HeadSleep {
    fn fixed(deadline: Instant) -> Self {
        let sleep = Box::pin(tokio::time::sleep_until(deadline.into()));
        Self {
            counts: None,
            header_timeout: Duration::ZERO,
            idle_timeout: Duration::ZERO,
            started: Instant::now(),
            read_at_start: 0,
            keep_alive: false,
            first_byte: None,
            sleep,
        }
    }

    fn waiting_for_head(timer: &HeadTimer) -> Self {
        let started = Instant::now();
        let keep_alive = timer.counts.written.load(Ordering::Relaxed) > 0;
        let wait = if keep_alive {
            timer.idle_timeout
        } else {
            timer.header_timeout
        };
        Self {
            counts: Some(Arc::clone(&timer.counts)),
            header_timeout: timer.header_timeout,
            idle_timeout: timer.idle_timeout,
            started,
            read_at_start: timer.counts.read.load(Ordering::Relaxed),
            keep_alive,
            first_byte: None,
            sleep: Box::pin(tokio::time::sleep_until((started + wait).into())),
        }
    }

    /// The deadline as of now: the header timeout from the start on a new
    /// connection; on a keep-alive one, the idle timeout from the start until
    /// the head's first byte, then the header timeout from that byte.
    fn deadline(&mut self) -> Option<Instant> {
        let counts = self.counts.as_ref()?;
        if !self.keep_alive {
            return Some(self.started + self.header_timeout);
        }
        if self.first_byte.is_none() && counts.read.load(Ordering::Relaxed) != self.read_at_start {
            self.first_byte = Some(Instant::now());
        }
        Some(match self.first_byte {
            Some(at) => at + self.header_timeout,
            None => self.started + self.idle_timeout,
        })
    }
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(deadline) = self.deadline() {
            let deadline = tokio::time::Instant::from_std(deadline);
            if self.sleep.deadline() != deadline {
                self.sleep.as_mut().reset(deadline);
            }
        }
        self.sleep.as_mut().poll(cx)
    }
}

impl hyper::rt::Sleep for HeadSleep {}
