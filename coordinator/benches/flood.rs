//! Connection floods against a real coordinator (the release binary in a process of its
//! own, TLS on, default connection limits) and what legitimate callers see meanwhile.
//!
//! A legitimate call is what `evalctl status` does: a new connection from 127.0.0.1, its
//! TLS handshake and one `ListCampaigns`. For each scenario the bench holds the flood open
//! and makes `EVALCTL_FLOOD_CALLS` (100) such calls one after another, then prints their
//! p50, p99 and max. The floods come from other loopback addresses (other peers):
//!
//! - `silent`: 1,000 TCP connections from 127.0.0.2 that never send a ClientHello;
//! - `idle-tls`: 2,000 completed TLS sessions from 127.0.0.3-10 that never send a request
//!   (the bench also reports how many the coordinator still holds after 30 s, and its file
//!   descriptors and memory);
//! - `slow-headers`: 200 connections from 127.0.0.11 that send the HTTP/2 preface and a
//!   HEADERS frame that never finishes, a byte a second.
//!
//! DESIGN.md's target: legitimate calls keep p99 under 100 ms in every scenario.
//!
//! ```sh
//! cargo bench -p evalctl-coordinator --bench flood
//! ```

mod support;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use evalctl_proto::v1 as pb;
use evalctl_proto::v1::campaign_service_client::CampaignServiceClient;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// Longest a legitimate call is waited for; a call that takes longer counts as this long.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// The coordinator under test.
struct Coordinator {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_coordinator(dir: &Path) -> Coordinator {
    let binary = env!("CARGO_BIN_EXE_evalctl-coordinator");
    let certs = dir.join("certs");
    let generated = Command::new(binary)
        .args(["gen-certs", "--hosts", "localhost,127.0.0.1", "--out"])
        .arg(&certs)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .expect("run gen-certs");
    assert!(generated.status.success(), "gen-certs: {generated:?}");
    let mut command = Command::new(binary);
    command
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .arg("--tls-cert")
        .arg(certs.join("server.pem"))
        .arg("--tls-key")
        .arg(certs.join("server-key.pem"))
        .env("RUST_LOG", "error");
    let (child, addr) = support::spawn_coordinator(command);
    let addr = addr.parse().expect("a socket address");
    Coordinator { child, addr }
}

async fn tcp_from(source: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(to).await
}

fn client_config(ca: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("read ca.pem") {
        roots.add(cert.expect("a CA certificate")).expect("add CA");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// `calls` legitimate calls one after another; their latencies, sorted, in ms.
async fn legitimate_calls(addr: SocketAddr, ca: &Path, calls: usize) -> Vec<f64> {
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(
        std::fs::read(ca).expect("read ca.pem"),
    ));
    let mut took = Vec::with_capacity(calls);
    let mut failed = 0;
    for _ in 0..calls {
        let started = Instant::now();
        let call = async {
            let channel = Endpoint::from_shared(format!("https://127.0.0.1:{}", addr.port()))
                .expect("endpoint")
                .tls_config(tls.clone())
                .expect("TLS config")
                .connect()
                .await
                .map_err(|e| e.to_string())?;
            CampaignServiceClient::new(channel)
                .list_campaigns(pb::ListCampaignsRequest {})
                .await
                .map_err(|s| s.to_string())
        };
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(_)) => took.push(started.elapsed().as_secs_f64() * 1e3),
            Ok(Err(_)) | Err(_) => {
                failed += 1;
                took.push(CALL_TIMEOUT.as_secs_f64() * 1e3);
            }
        }
    }
    if failed > 0 {
        eprintln!("flood:   {failed} of {calls} legitimate calls failed or timed out");
    }
    took.sort_by(f64::total_cmp);
    took
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn report(scenario: &str, took: &[f64]) {
    println!(
        "flood: {scenario:<13} legitimate calls p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(took, 50.0),
        percentile(took, 99.0),
        took.last().copied().unwrap_or(0.0),
    );
}

/// File descriptors and resident memory (MiB) of a process.
fn resources(pid: u32) -> (usize, f64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0;
    (fds, rss)
}

/// How many of `streams` the server has closed (reads return end of file or an error).
async fn closed_by_server<S: tokio::io::AsyncRead + Unpin>(streams: &mut [S]) -> usize {
    let mut closed = 0;
    let mut buf = [0u8; 4096];
    for stream in streams {
        let gone = tokio::time::timeout(Duration::from_millis(5), async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return true,
                    Ok(_) => continue,
                }
            }
        })
        .await
        .unwrap_or(false);
        if gone {
            closed += 1;
        }
    }
    closed
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run());
}

async fn run() {
    let calls = std::env::var("EVALCTL_FLOOD_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100usize);
    let dir = tempfile::tempdir().expect("temp dir");
    let coordinator = start_coordinator(dir.path());
    let pid = coordinator.child.id();
    let addr = coordinator.addr;
    let ca = dir.path().join("certs/ca.pem");
    let (fds, rss) = resources(pid);
    println!("flood: coordinator at rest: {fds} fds, {rss:.1} MiB");

    report("baseline", &legitimate_calls(addr, &ca, calls).await);

    // Silent TCP connections: no ClientHello, ever.
    let mut silent = Vec::new();
    for _ in 0..1000 {
        if let Ok(tcp) = tcp_from("127.0.0.2".parse().expect("ip"), addr).await {
            silent.push(tcp);
        }
    }
    report("silent", &legitimate_calls(addr, &ca, calls).await);
    let closed = closed_by_server(&mut silent).await;
    println!(
        "flood: silent        {closed} of {} closed by the coordinator so far",
        silent.len()
    );
    drop(silent);

    // Completed TLS sessions that never send a request.
    let config = client_config(&ca);
    let mut idle = Vec::new();
    let opened = Instant::now();
    for i in 0..2000u32 {
        let source = IpAddr::from([127, 0, 0, 3 + (i % 8) as u8]);
        let Ok(tcp) = tcp_from(source, addr).await else {
            continue;
        };
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&config));
        if let Ok(Ok(session)) = tokio::time::timeout(
            Duration::from_secs(5),
            connector.connect(ServerName::try_from("localhost").expect("name"), tcp),
        )
        .await
        {
            idle.push(session);
        }
    }
    let (fds, rss) = resources(pid);
    println!(
        "flood: idle-tls      {} sessions open after {:.1}s: coordinator {fds} fds, {rss:.1} MiB",
        idle.len(),
        opened.elapsed().as_secs_f64()
    );
    report("idle-tls", &legitimate_calls(addr, &ca, calls).await);
    let wait = Duration::from_secs(30).saturating_sub(opened.elapsed());
    tokio::time::sleep(wait).await;
    let closed = closed_by_server(&mut idle).await;
    let (fds, rss) = resources(pid);
    println!(
        "flood: idle-tls      after 30 s: {closed} of {} closed by the coordinator; it holds {fds} fds, {rss:.1} MiB",
        idle.len()
    );
    drop(idle);

    // Request headers that never finish.
    let mut slow = Vec::new();
    for _ in 0..200 {
        let Ok(tcp) = tcp_from("127.0.0.11".parse().expect("ip"), addr).await else {
            continue;
        };
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&config));
        let Ok(mut session) = connector
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
        else {
            continue;
        };
        let started = session
            .write_all(
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0\0\0\x64\x01\x04\0\0\0\x01",
            )
            .await;
        if started.is_ok() {
            slow.push(session);
        }
    }
    let opened_count = slow.len();
    let dripping = Instant::now();
    let mut drip = Box::pin(async {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            for session in &mut slow {
                let _ = session.write_all(&[0x82]).await;
            }
        }
    });
    let took = tokio::select! {
        took = legitimate_calls(addr, &ca, calls) => took,
        _ = &mut drip => unreachable!("the drip never ends"),
    };
    report("slow-headers", &took);
    let _ = tokio::time::timeout(
        Duration::from_secs(15).saturating_sub(dripping.elapsed()),
        &mut drip,
    )
    .await;
    drop(drip);
    let closed = closed_by_server(&mut slow).await;
    println!(
        "flood: slow-headers  after {:.0} s: {closed} of {opened_count} closed by the coordinator",
        dripping.elapsed().as_secs_f64()
    );
}
