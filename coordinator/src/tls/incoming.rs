//! The listener's stream of connections: plain TCP, or TLS with the handshake done off the
//! accept loop (a slow or silent client cannot hold up others). Each connection is admitted
//! against the connection caps first ([`crate::connections`]) and carries an idle clock
//! that ends it once it has gone without a call for too long.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;
use tracing::{debug, warn};

use super::ServerTls;
use super::names::{self, CertName};
use crate::connections::failures::FailureLog;
use crate::connections::{Activity, Admission, ConnTicket, IdleClock};
use crate::metrics::Metrics;

/// Longest a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most TLS handshakes in flight from everyone; further connections wait in the kernel's
/// backlog. (Each peer has a lower cap of its own, so one peer cannot take them all.)
pub const MAX_HANDSHAKES: usize = 256;

/// Accepted connections handed to the gRPC server before the accept loop waits.
const QUEUE: usize = 64;

/// The transport under one connection.
#[derive(Debug)]
pub enum Transport {
    /// Plain text (loopback, or `--insecure`).
    Plain(TcpStream),
    /// TLS, handshake done.
    Tls(Box<TlsStream<TcpStream>>),
}

/// One accepted connection: its transport, its place among the admitted connections and its
/// idle clock.
#[derive(Debug)]
pub struct Conn {
    transport: Transport,
    activity: Activity,
    clock: IdleClock,
    /// Closing for idleness was counted.
    expired: bool,
    metrics: Arc<Metrics>,
    _ticket: ConnTicket,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.metrics.connection_opened(-1);
    }
}

/// What the authorization layer learns about a connection (a request extension).
#[derive(Debug, Clone, Default)]
pub struct PeerInfo {
    /// The client's address.
    pub remote_addr: Option<SocketAddr>,
    /// The connection is TLS.
    pub tls: bool,
    /// The client presented a certificate that the client CA verified (mutual TLS).
    pub client_cert: bool,
    /// The connection's calls in progress (the idle clock reads them).
    pub activity: Activity,
    /// That certificate's DNS and URI subject alternative names, read once per connection.
    pub client_cert_names: Arc<[CertName]>,
}

impl Connected for Conn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        match &self.transport {
            Transport::Plain(tcp) => PeerInfo {
                remote_addr: tcp.peer_addr().ok(),
                tls: false,
                client_cert: false,
                activity: self.activity.clone(),
                client_cert_names: Arc::default(),
            },
            Transport::Tls(tls) => {
                let (tcp, session) = tls.get_ref();
                let leaf = session.peer_certificates().and_then(|c| c.first());
                PeerInfo {
                    remote_addr: tcp.peer_addr().ok(),
                    tls: true,
                    client_cert: leaf.is_some(),
                    activity: self.activity.clone(),
                    client_cert_names: leaf
                        .map_or_else(Arc::default, |cert| names::subject_alt_names(cert).into()),
                }
            }
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let read = match &mut this.transport {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        if read.is_pending() && this.clock.poll_expired(cx) {
            if !std::mem::replace(&mut this.expired, true) {
                this.metrics.connection_closed_idle();
                debug!("closing a connection that had no call for its idle timeout");
            }
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection idle for longer than its timeout",
            )));
        }
        read
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().transport {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().transport {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().transport {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().transport {
            Transport::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.transport {
            Transport::Plain(s) => s.is_write_vectored(),
            Transport::Tls(s) => s.is_write_vectored(),
        }
    }
}

impl Conn {
    fn new(
        transport: Transport,
        ticket: ConnTicket,
        admission: &Admission,
        metrics: Arc<Metrics>,
    ) -> Conn {
        let limits = admission.limits();
        let activity = Activity::new();
        let clock = IdleClock::new(
            activity.clone(),
            limits.idle_timeout,
            limits.first_call_timeout,
        );
        metrics.connection_opened(1);
        Conn {
            transport,
            activity,
            clock,
            expired: false,
            metrics,
            _ticket: ticket,
        }
    }
}

/// Accepts connections until `stop` is cancelled: admits each against the caps of
/// `admission`, then hands it on as it is (no TLS) or after its TLS handshake with the
/// configuration current at that moment.
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    admission: Arc<Admission>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> impl Stream<Item = Result<Conn, io::Error>> {
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(accept_loop(listener, tls, admission, metrics, stop, tx));
    ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    admission: Arc<Admission>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    tx: mpsc::Sender<Result<Conn, io::Error>>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let failures = Arc::new(FailureLog::default());
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tx.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            Err(err) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(error = %err, "failed to accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut ticket = match admission.admit(peer.ip()) {
            Ok(ticket) => ticket,
            Err(refused) => {
                metrics.connection_refused(refused.reason());
                failures.failed("refused", peer, &format!("closed on accept: {refused}"));
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &tls else {
            let conn = Conn::new(
                Transport::Plain(tcp),
                ticket,
                &admission,
                Arc::clone(&metrics),
            );
            if tx.send(Ok(conn)).await.is_err() {
                return;
            }
            continue;
        };
        if let Err(refused) = ticket.start_handshake() {
            metrics.connection_refused(refused.reason());
            failures.failed("refused", peer, &format!("closed on accept: {refused}"));
            continue;
        }
        let permit = tokio::select! {
            _ = stop.cancelled() => return,
            permit = Arc::clone(&handshakes).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
        let tx = tx.clone();
        let admission = Arc::clone(&admission);
        let metrics = Arc::clone(&metrics);
        let failures = Arc::clone(&failures);
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
            drop(permit);
            ticket.handshake_done();
            match handshake {
                Ok(Ok(stream)) => {
                    let conn = Conn::new(
                        Transport::Tls(Box::new(stream)),
                        ticket,
                        &admission,
                        metrics,
                    );
                    let _ = tx.send(Ok(conn)).await;
                }
                Ok(Err(err)) => {
                    metrics.tls_handshake_failed("error");
                    failures.failed("tls_handshake", peer, &handshake_failure(&err));
                }
                Err(_) => {
                    metrics.tls_handshake_failed("timeout");
                    failures.failed(
                        "tls_handshake",
                        peer,
                        &format!("TLS handshake timed out after {HANDSHAKE_TIMEOUT:?}"),
                    );
                }
            }
        });
    }
}

/// A failed handshake in words, with a hint for the common cases.
fn handshake_failure(err: &io::Error) -> String {
    let hint = match err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidMessage(_)) => {
            " (the client does not speak TLS: it should dial https://, not http://)"
        }
        Some(rustls::Error::AlertReceived(_)) => {
            " (the client refused this server's certificate: does it trust the CA that signed it?)"
        }
        Some(rustls::Error::InvalidCertificate(_)) => {
            " (the client's certificate is not signed by the --tls-client-ca CA, or has expired)"
        }
        _ => "",
    };
    format!("TLS handshake failed: {err}{hint}")
}
