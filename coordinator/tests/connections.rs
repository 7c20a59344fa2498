//! Connection limits of the gRPC listener, against a real coordinator on loopback: a peer
//! cannot take every TLS handshake slot, connections over the caps are closed on accept,
//! and connections without a call (silent after the handshake, request headers never
//! finished, idle after their last call) are closed, while a connection with a call in
//! progress is kept and a client whose idle connection was closed dials again.
//!
//! Peers are told apart by source address: loopback answers on all of 127.0.0.0/8, so a
//! client bound to 127.0.0.2 is another peer than one on 127.0.0.1.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use evalctl_coordinator::config::Config;
use evalctl_coordinator::connections::ConnectionLimits;
use evalctl_coordinator::server::{Coordinator, ServeError};
use evalctl_coordinator::tls::certs::{self, CertsRequest};
use evalctl_proto::v1 as pb;
use evalctl_proto::v1::campaign_service_client::CampaignServiceClient;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// A coordinator serving in this process.
struct Lab {
    _dir: tempfile::TempDir,
    certs: Option<PathBuf>,
    addr: SocketAddr,
    metrics: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<Result<(), ServeError>>,
}

impl Lab {
    async fn start(tls: bool, limits: ConnectionLimits) -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::with_data_dir(dir.path());
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
        config.shutdown_grace = Duration::from_secs(2);
        config.connections = limits;
        let certs = tls.then(|| {
            let certs = dir.path().join("certs");
            certs::generate(
                &certs,
                &CertsRequest {
                    hosts: vec!["localhost".into(), "127.0.0.1".into()],
                    agents: vec![],
                    days: 2,
                    force: false,
                },
            )
            .unwrap();
            config
                .set_tls(
                    Some(certs.join("server.pem")),
                    Some(certs.join("server-key.pem")),
                    None,
                )
                .unwrap();
            certs
        });
        let coordinator = Coordinator::bind(config).await.expect("coordinator binds");
        let addr = coordinator.local_addr();
        let metrics = coordinator.metrics_addr().expect("metrics are on");
        let stop = CancellationToken::new();
        let task = tokio::spawn(coordinator.serve(stop.clone().cancelled_owned()));
        Lab {
            _dir: dir,
            certs,
            addr,
            metrics,
            stop,
            task,
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().expect("coordinator stops cleanly");
    }

    /// A gRPC channel from 127.0.0.1 (connected on its first call).
    fn channel(&self) -> Channel {
        let scheme = if self.certs.is_some() {
            "https"
        } else {
            "http"
        };
        let mut endpoint =
            Endpoint::from_shared(format!("{scheme}://127.0.0.1:{}", self.addr.port())).unwrap();
        if let Some(certs) = &self.certs {
            endpoint = endpoint
                .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(
                    std::fs::read(certs.join("ca.pem")).unwrap(),
                )))
                .unwrap();
        }
        endpoint.connect_lazy()
    }

    /// A TLS session from `source` with the handshake done and nothing sent.
    async fn tls_session(&self, source: &str) -> tokio_rustls::client::TlsStream<TcpStream> {
        let ca = self.certs.as_ref().expect("TLS is on").join("ca.pem");
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = tcp_from(source, self.addr).await;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("TLS handshake")
    }

    /// A metric's value from the Prometheus endpoint (0 when absent).
    async fn metric(&self, series: &str) -> f64 {
        let mut tcp = TcpStream::connect(self.metrics).await.unwrap();
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        tcp.read_to_string(&mut text).await.unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

/// A TCP connection to `to` from the loopback address `source`.
async fn tcp_from(source: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(source.parse::<IpAddr>().unwrap(), 0))
        .unwrap();
    socket.connect(to).await.expect("TCP connect")
}

/// Whether the server closes `stream` (end of file or an error) within `within`; whatever
/// it sends before is read and ignored.
async fn closed_within(stream: &mut (impl AsyncRead + Unpin), within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await
    .is_ok()
}

/// One `ListCampaigns` on a new connection from 127.0.0.1, TLS handshake included,
/// bounded by `within`.
async fn fresh_call(lab: &Lab, within: Duration) -> Result<(), String> {
    let mut client = CampaignServiceClient::new(lab.channel());
    match tokio::time::timeout(within, client.list_campaigns(pb::ListCampaignsRequest {})).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(status)) => Err(format!("refused: {status}")),
        Err(_) => Err(format!("no answer within {within:?}")),
    }
}

#[tokio::test]
async fn silent_connections_from_one_peer_do_not_hold_up_the_others() {
    let lab = Lab::start(
        true,
        ConnectionLimits {
            max_handshakes_per_peer: 8,
            ..ConnectionLimits::DEFAULT
        },
    )
    .await;
    // More silent connections than there are handshake slots in all: without a cap per
    // peer they take every slot for the 10 s handshake timeout, and new clients wait.
    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(tcp_from("127.0.0.2", lab.addr).await);
    }
    let mut closed = 0;
    for stream in &mut silent {
        if closed_within(stream, Duration::from_millis(50)).await {
            closed += 1;
        }
    }
    assert!(
        closed >= 300 - 8 - 10,
        "connections past the peer's handshake cap are closed on accept; {closed} of 300 were"
    );
    for call in 0..20 {
        fresh_call(&lab, Duration::from_secs(3))
            .await
            .unwrap_or_else(|err| panic!("call {call} from another peer: {err}"));
    }
    assert!(
        lab.metric("evalctl_connections_refused_total{reason=\"max_handshakes_per_peer\"}")
            .await
            >= 280.0
    );
    drop(silent);
    lab.stop().await;
}

#[tokio::test]
async fn connections_over_the_caps_are_closed_on_accept() {
    let lab = Lab::start(
        false,
        ConnectionLimits {
            max_connections: 8,
            max_per_peer: 5,
            ..ConnectionLimits::DEFAULT
        },
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(tcp_from("127.0.0.2", lab.addr).await);
    }
    let mut sixth = tcp_from("127.0.0.2", lab.addr).await;
    assert!(
        closed_within(&mut sixth, Duration::from_secs(2)).await,
        "a sixth connection from one peer is closed"
    );
    for _ in 0..3 {
        held.push(tcp_from("127.0.0.3", lab.addr).await);
    }
    let mut ninth = tcp_from("127.0.0.4", lab.addr).await;
    assert!(
        closed_within(&mut ninth, Duration::from_secs(2)).await,
        "a ninth connection in all is closed"
    );
    // The admitted ones stay (until their first-call timeout, 10 s by default).
    for stream in &mut held {
        assert!(!closed_within(stream, Duration::from_millis(100)).await);
    }
    assert_eq!(lab.metric("evalctl_connections_open").await, 8.0);
    drop(held);
    // Their places are free again.
    tokio::time::sleep(Duration::from_millis(200)).await;
    fresh_call(&lab, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        lab.metric("evalctl_connections_refused_total{reason=\"max_per_peer\"}")
            .await,
        1.0
    );
    assert_eq!(
        lab.metric("evalctl_connections_refused_total{reason=\"max_connections\"}")
            .await,
        1.0
    );
    lab.stop().await;
}

#[tokio::test]
async fn connections_without_a_call_are_closed_and_calls_in_progress_are_kept() {
    let idle = Duration::from_secs(1);
    let lab = Lab::start(
        true,
        ConnectionLimits {
            idle_timeout: Some(idle),
            first_call_timeout: idle,
            ..ConnectionLimits::DEFAULT
        },
    )
    .await;
    // Silent after the handshake.
    let mut silent = lab.tls_session("127.0.0.2").await;
    assert!(
        closed_within(&mut silent, Duration::from_secs(5)).await,
        "a TLS connection that never sends a request is closed"
    );
    // The HTTP/2 preface and settings, then request headers that never finish: a HEADERS
    // frame announcing 100 bytes, of which 10 are sent, a byte a second after that.
    let mut slow = lab.tls_session("127.0.0.2").await;
    slow.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    slow.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    slow.write_all(&[0, 0, 100, 1, 4, 0, 0, 0, 1])
        .await
        .unwrap();
    slow.write_all(&[0x82; 10]).await.unwrap();
    slow.flush().await.unwrap();
    let drip = async {
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if slow.write_all(&[0x82]).await.is_err() || slow.flush().await.is_err() {
                return true;
            }
        }
        closed_within(&mut slow, Duration::from_millis(100)).await
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(8), drip)
            .await
            .unwrap_or(false),
        "a connection whose request headers never finish is closed"
    );

    // A call in progress (a watch of a campaign) keeps its connection past the timeout.
    let channel = lab.channel();
    let mut campaigns = CampaignServiceClient::new(channel.clone());
    let submitted = campaigns
        .submit(pb::SubmitRequest {
            matrix_yaml: MATRIX.to_owned(),
            source_name: "idle.yaml".into(),
            dry_run: false,
            submitted_by: "test".into(),
            allow_empty: false,
        })
        .await
        .unwrap()
        .into_inner();
    let mut watch = campaigns
        .watch(pb::WatchRequest {
            campaign: submitted.campaign_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let snapshot = watch.message().await.unwrap();
    assert!(snapshot.is_some(), "a watch starts with a snapshot");
    let closed_before = lab.metric("evalctl_connections_closed_idle_total").await;
    tokio::time::sleep(idle * 3).await;
    CampaignServiceClient::new(lab.channel())
        .cancel(pb::CancelRequest {
            campaign: submitted.campaign_id.clone(),
            reason: "test".into(),
        })
        .await
        .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("the watch answers")
        .expect("the watch stream is still open after the idle timeout");
    assert!(event.is_some());
    drop(watch);
    // Once its last call ended, the connection is closed after the idle timeout...
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let closed = lab.metric("evalctl_connections_closed_idle_total").await;
        if closed > closed_before {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the watch's connection was not closed once idle ({closed} closed idle, {closed_before} before)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // ...and the client dials again for its next call.
    campaigns
        .list_campaigns(pb::ListCampaignsRequest {})
        .await
        .expect("a call on a channel whose idle connection was closed");
    lab.stop().await;
}

const MATRIX: &str = "campaign: idle
models:
  - { name: sim-1b, path: sim-1b, params_b: 1 }
frameworks:
  - name: sim
quantizations:
  - { name: bf16, bits: 16 }
workloads:
  - name: chat
    api: chat
    dataset: { kind: random, input_tokens: 16, output_tokens: 4 }
    load: { concurrency: [1] }
    requests: 2
";
