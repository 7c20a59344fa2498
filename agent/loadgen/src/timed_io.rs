//! Socket I/O that stamps when bytes move: a TCP stream wrapper that records the instant of
//! every read and write on a per-connection clock. The client takes a request's send instant
//! and each chunk's arrival from these stamps, so timings do not depend on when a task woke.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::clock::now_ns;

/// Per-connection stamps of the last socket read and write (process clock, ns).
#[derive(Debug, Default)]
pub(crate) struct IoClock {
    /// When the last read that moved bytes returned (or its bytes arrived).
    pub(crate) last_read_ns: AtomicU64,
    /// When the last write that moved bytes returned.
    pub(crate) last_write_ns: AtomicU64,
    /// Reads that moved bytes.
    pub(crate) reads: AtomicU64,
}

/// A TCP stream that stamps its [`IoClock`] on every read and write that moves bytes.
///
/// On Linux a read's stamp is the kernel's receive timestamp of its bytes (`SO_TIMESTAMPNS`),
/// moved onto the monotonic clock, so the instant does not depend on when this task ran; where
/// the kernel gives none, it is the moment the read returned.
pub(crate) struct TimedStream {
    inner: TcpStream,
    clock: Arc<IoClock>,
    /// The socket delivers kernel receive timestamps.
    kernel_stamps: bool,
    /// Where `recvmsg` reads to (hyper hands out uninitialised buffers, and zeroing them on
    /// every read would cost more than copying what arrived).
    scratch: Vec<u8>,
}

impl TimedStream {
    /// Wraps `tcp`, asking the kernel for receive timestamps where it gives them.
    pub(crate) fn new(tcp: TcpStream, clock: Arc<IoClock>) -> TimedStream {
        let kernel_stamps = kernel_stamps::enable(&tcp);
        TimedStream {
            inner: tcp,
            clock,
            kernel_stamps,
            scratch: Vec::new(),
        }
    }

    fn stamp_read(&self, at_ns: u64) {
        self.clock.last_read_ns.store(at_ns, Ordering::Relaxed);
        self.clock.reads.fetch_add(1, Ordering::Relaxed);
    }
}

impl AsyncRead for TimedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.kernel_stamps {
            return kernel_stamps::poll_read(&mut self, cx, buf);
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.stamp_read(now_ns());
        }
        polled
    }
}

/// Kernel receive timestamps for TCP reads (Linux).
#[cfg(target_os = "linux")]
mod kernel_stamps {
    use std::io;
    use std::os::fd::AsRawFd;
    use std::task::{Context, Poll, ready};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};
    use nix::sys::time::TimeSpec;
    use tokio::io::{Interest, ReadBuf};
    use tokio::net::TcpStream;

    use super::{TimedStream, now_ns};

    /// A kernel timestamp older than this is not trusted (a wall-clock step in between).
    const MAX_AGE: Duration = Duration::from_secs(1);

    /// Asks the kernel to timestamp received data; false when it refuses.
    pub(super) fn enable(tcp: &TcpStream) -> bool {
        setsockopt(tcp, sockopt::ReceiveTimestampns, &true).is_ok()
    }

    /// Bytes read per `recvmsg` at most.
    const SCRATCH_BYTES: usize = 16 * 1024;

    /// Reads with `recvmsg` and stamps the read with the arrival time of its bytes.
    pub(super) fn poll_read(
        stream: &mut TimedStream,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let fd = stream.inner.as_raw_fd();
        if stream.scratch.is_empty() {
            stream.scratch = vec![0; SCRATCH_BYTES];
        }
        let room = buf.remaining().min(SCRATCH_BYTES);
        if room == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            ready!(stream.inner.poll_read_ready(cx))?;
            let scratch = &mut stream.scratch[..room];
            let read = stream.inner.try_io(Interest::READABLE, || {
                let mut iov = [io::IoSliceMut::new(&mut *scratch)];
                let mut space = nix::cmsg_space!(TimeSpec);
                let msg = recvmsg::<()>(fd, &mut iov, Some(&mut space), MsgFlags::empty())?;
                let arrived = msg.cmsgs()?.find_map(|c| match c {
                    ControlMessageOwned::ScmTimestampns(ts) => Some(ts),
                    _ => None,
                });
                Ok((msg.bytes, arrived))
            });
            match read {
                Ok((n, arrived)) => {
                    buf.put_slice(&stream.scratch[..n]);
                    if n > 0 {
                        stream.stamp_read(monotonic(arrived));
                    }
                    return Poll::Ready(Ok(()));
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
    }

    /// The arrival instant on the load generator's clock: now, minus how long ago the kernel
    /// says the bytes arrived (both wall-clock readings, so their offset cancels).
    fn monotonic(arrived: Option<TimeSpec>) -> u64 {
        let now = now_ns();
        let Some(ts) = arrived else { return now };
        let Ok(wall) = SystemTime::now().duration_since(UNIX_EPOCH) else {
            return now;
        };
        let (Ok(secs), Ok(nanos)) = (u64::try_from(ts.tv_sec()), u32::try_from(ts.tv_nsec()))
        else {
            return now;
        };
        match wall.checked_sub(Duration::new(secs, nanos)) {
            Some(age) if age <= MAX_AGE => now.saturating_sub(age.as_nanos() as u64),
            _ => now,
        }
    }
}

/// Without kernel timestamps, reads are stamped when they return.
#[cfg(not(target_os = "linux"))]
mod kernel_stamps {
    use std::io;
    use std::task::{Context, Poll};

    use tokio::io::ReadBuf;
    use tokio::net::TcpStream;

    use super::TimedStream;

    pub(super) fn enable(_: &TcpStream) -> bool {
        false
    }

    pub(super) fn poll_read(
        _: &mut TimedStream,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        unreachable!("kernel timestamps are never enabled off Linux")
    }
}

impl AsyncWrite for TimedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.clock.last_write_ns.store(now_ns(), Ordering::Relaxed);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.clock.last_write_ns.store(now_ns(), Ordering::Relaxed);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
