//! A store that cannot write is visible: `evalctl status` says so (since when, why), the
//! gRPC health service answers NOT_SERVING, and `evalctl_store_writable` is 0; once writes
//! succeed again all three say so.
//!
//! The coordinator runs in this process, so its database can be capped at its current size
//! (SQLite's `max_page_count`): writes then fail with `SQLITE_FULL`, the very error of a
//! full disk, without filling the test machine's disk. `evalctl` is the real binary.

use std::io::{Read, Write};
use std::time::Duration;

use evalctl_coordinator::config::Config;
use evalctl_coordinator::server::Coordinator;
use evalctl_proto::v1 as pb;
use evalctl_proto::v1::campaign_service_client::CampaignServiceClient;
use evalctl_tests::{evalctl, eventually};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A matrix of `models` sim models (each a unit of four steps): 500 of them need more
/// pages than the database has free.
fn matrix(campaign: &str, models: usize) -> String {
    let models: String = (0..models)
        .map(|i| format!("  - {{ name: sim-{i}, path: sim-{i}, params_b: 1 }}\n"))
        .collect();
    format!(
        "campaign: {campaign}
models:
{models}frameworks:
  - name: sim
quantizations:
  - {{ name: bf16, bits: 16 }}
workloads:
  - name: chat
    api: chat
    dataset: {{ kind: random, input_tokens: 16, output_tokens: 4 }}
    load: {{ concurrency: [1, 2, 4, 8] }}
    requests: 2
"
    )
}

fn submit(url: &str, campaign: &str) -> Result<pb::SubmitResponse, tonic::Status> {
    let url = url.to_owned();
    let request = pb::SubmitRequest {
        matrix_yaml: matrix(campaign, 500),
        source_name: format!("{campaign}.yaml"),
        dry_run: false,
        submitted_by: "test".into(),
        allow_empty: false,
    };
    runtime().block_on(async move {
        CampaignServiceClient::connect(url)
            .await
            .expect("connect")
            .submit(request)
            .await
            .map(tonic::Response::into_inner)
    })
}

fn health(url: &str) -> ServingStatus {
    let url = url.to_owned();
    runtime().block_on(async move {
        let answer = HealthClient::new(
            tonic::transport::Endpoint::from_shared(url)
                .expect("url")
                .connect()
                .await
                .expect("connect"),
        )
        .check(tonic_health::pb::HealthCheckRequest {
            service: "evalctl.v1.CampaignService".into(),
        })
        .await
        .expect("health check")
        .into_inner();
        ServingStatus::try_from(answer.status).expect("a known status")
    })
}

fn metric(addr: std::net::SocketAddr, series: &str) -> Option<f64> {
    let mut tcp = std::net::TcpStream::connect(addr).expect("metrics endpoint");
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut text = String::new();
    tcp.read_to_string(&mut text).expect("read");
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

/// A runtime for the test's client calls (the coordinator has its own).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn a_store_that_cannot_write_shows_in_status_health_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let server = tokio::runtime::Runtime::new().unwrap();
    let mut config = Config::with_data_dir(dir.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    let coordinator = server.block_on(Coordinator::bind(config)).expect("binds");
    let url = format!("http://{}", coordinator.local_addr());
    let metrics = coordinator.metrics_addr().expect("metrics on");
    let store = coordinator.store().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = server.spawn(coordinator.serve(async move {
        let _ = stopped.await;
    }));

    submit(&url, "before").expect("a submit while the store writes");
    let status = evalctl(Some(&url), &["status"]);
    assert!(status.status.success());
    assert!(
        !String::from_utf8_lossy(&status.stderr).contains("cannot write"),
        "no warning while the store writes"
    );

    // The database is full: no page may be added.
    server.block_on(store.limit_pages(Some(0))).unwrap();
    let refused = submit(&url, "during").expect_err("a submit into a full store fails");
    assert!(!refused.message().is_empty());
    let status = evalctl(Some(&url), &["status"]);
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert!(status.status.success(), "status still answers: {stderr}");
    assert!(
        stderr.contains("store cannot write since") && stderr.contains("full"),
        "status names the failure and its cause: {stderr}"
    );
    let json = evalctl(Some(&url), &["--json", "status"]);
    assert!(serde_json::from_slice::<serde_json::Value>(&json.stdout).is_ok());
    assert!(String::from_utf8_lossy(&json.stderr).contains("cannot write"));
    eventually(Duration::from_secs(10), "health NOT_SERVING", || {
        health(&url) == ServingStatus::NotServing
    });
    assert_eq!(metric(metrics, "evalctl_store_writable"), Some(0.0));
    assert!(metric(metrics, "evalctl_store_write_failures_total").unwrap_or(0.0) >= 1.0);

    // Space again: the next write succeeds and every signal clears.
    server.block_on(store.limit_pages(None)).unwrap();
    submit(&url, "after").expect("a submit once the store has room");
    let status = evalctl(Some(&url), &["status"]);
    assert!(
        !String::from_utf8_lossy(&status.stderr).contains("cannot write"),
        "the warning is gone"
    );
    eventually(Duration::from_secs(10), "health SERVING", || {
        health(&url) == ServingStatus::Serving
    });
    assert_eq!(metric(metrics, "evalctl_store_writable"), Some(1.0));

    let _ = stop.send(());
    server
        .block_on(serving)
        .unwrap()
        .expect("coordinator stops cleanly");
}
