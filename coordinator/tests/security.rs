//! Security over real TLS on loopback: a coordinator served in this process with
//! certificates from `gen-certs`, called with tonic clients that present (or not) bearer
//! tokens and client certificates. docs/security.md describes what is checked here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use evalctl_coordinator::auth::rate::Rate;
use evalctl_coordinator::auth::{Role, token};
use evalctl_coordinator::config::Config;
use evalctl_coordinator::server::{Coordinator, ServeError};
use evalctl_coordinator::store::Store;
use evalctl_coordinator::tls::ServerTls;
use evalctl_coordinator::tls::certs::{self, CertsRequest};
use evalctl_proto::v1 as pb;
use evalctl_proto::v1::agent_service_client::AgentServiceClient;
use evalctl_proto::v1::campaign_service_client::CampaignServiceClient;
use evalctl_proto::v1::token_service_client::TokenServiceClient;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// A coordinator serving TLS in this process, with its certificates.
struct Lab {
    _dir: tempfile::TempDir,
    mutual: bool,
    certs: PathBuf,
    addr: std::net::SocketAddr,
    metrics: Option<std::net::SocketAddr>,
    store: Store,
    tls: Arc<ServerTls>,
    stop: CancellationToken,
    task: JoinHandle<Result<(), ServeError>>,
}

struct Options {
    mutual: bool,
    submit_rate: Option<Rate>,
}

impl Lab {
    async fn start(options: Options) -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        certs::generate(
            &certs,
            &CertsRequest {
                hosts: vec!["localhost".into(), "127.0.0.1".into()],
                agents: vec!["node1".into()],
                days: 2,
                force: false,
            },
        )
        .unwrap();
        let mut config = Config::with_data_dir(dir.path());
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
        config.shutdown_grace = Duration::from_secs(2);
        config
            .set_tls(
                Some(certs.join("server.pem")),
                Some(certs.join("server-key.pem")),
                options.mutual.then(|| certs.join("ca.pem")),
            )
            .unwrap();
        if let Some(rate) = options.submit_rate {
            config.submit_rate = rate;
        }
        let coordinator = Coordinator::bind(config).await.expect("coordinator binds");
        let addr = coordinator.local_addr();
        let metrics = coordinator.metrics_addr();
        let store = coordinator.store().clone();
        let tls = coordinator.tls().expect("TLS is on");
        let stop = CancellationToken::new();
        let task = tokio::spawn(coordinator.serve(stop.clone().cancelled_owned()));
        Lab {
            _dir: dir,
            mutual: options.mutual,
            certs,
            addr,
            metrics,
            store,
            tls,
            stop,
            task,
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().expect("coordinator stops cleanly");
    }

    /// A token created directly in the store, as `evalctl-coordinator token create` does;
    /// returns once the coordinator enforces tokens and accepts this one (within its token
    /// cache TTL).
    async fn bootstrap_token(&self, name: &str, role: Role) -> String {
        let secret = token::generate();
        self.store
            .create_token(&secret.token_id, name, role, secret.hash, "test")
            .await
            .unwrap();
        let channel = self.tls_channel(self.mutual.then_some("node1")).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let answer = match role {
                Role::Agent => AgentServiceClient::new(channel.clone())
                    .heartbeat(authed(
                        pb::HeartbeatRequest {
                            agent_id: "probe".into(),
                            ..Default::default()
                        },
                        Some(&secret.secret),
                    ))
                    .await
                    .map(|_| ()),
                _ => CampaignServiceClient::new(channel.clone())
                    .list_campaigns(authed(pb::ListCampaignsRequest {}, Some(&secret.secret)))
                    .await
                    .map(|_| ()),
            };
            // Enforced (a call without a token is refused) and this token accepted.
            let enforced = CampaignServiceClient::new(channel.clone())
                .list_campaigns(authed(pb::ListCampaignsRequest {}, None))
                .await
                .is_err_and(|s| s.code() == Code::Unauthenticated);
            let accepted = !matches!(&answer, Err(s) if s.code() == Code::Unauthenticated);
            if accepted && enforced {
                return secret.secret;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "token {name} never accepted"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn channel(
        &self,
        ca: &Path,
        identity: Option<&str>,
    ) -> Result<Channel, tonic::transport::Error> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()));
        if let Some(agent) = identity {
            tls = tls.identity(Identity::from_pem(
                std::fs::read(self.certs.join(format!("agent-{agent}.pem"))).unwrap(),
                std::fs::read(self.certs.join(format!("agent-{agent}-key.pem"))).unwrap(),
            ));
        }
        Endpoint::from_shared(format!("https://127.0.0.1:{}", self.addr.port()))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
    }

    async fn tls_channel(&self, identity: Option<&str>) -> Channel {
        self.channel(&self.certs.join("ca.pem"), identity)
            .await
            .expect("TLS connection")
    }
}

/// Adds `authorization: Bearer <token>` to a request.
fn authed<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        let value: MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
        request.metadata_mut().insert("authorization", value);
    }
    request
}

fn matrix(campaign: &str) -> String {
    format!(
        "campaign: {campaign}
models:
  - {{ name: sim-1b, path: sim-1b, params_b: 1 }}
frameworks:
  - name: sim
quantizations:
  - {{ name: bf16, bits: 16 }}
workloads:
  - name: chat
    api: chat
    dataset: {{ kind: random, input_tokens: 16, output_tokens: 4 }}
    load: {{ concurrency: [1] }}
    requests: 2
"
    )
}

fn submit_request(campaign: &str) -> pb::SubmitRequest {
    pb::SubmitRequest {
        matrix_yaml: matrix(campaign),
        source_name: "test.yaml".into(),
        dry_run: false,
        submitted_by: "test".into(),
        allow_empty: false,
    }
}

fn register_request(agent: &str) -> pb::RegisterRequest {
    pb::RegisterRequest {
        agent_id: agent.into(),
        hostname: format!("{agent}.lab"),
        version: "0.1.0".into(),
        ..Default::default()
    }
}

#[track_caller]
fn assert_code<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, what: &str) {
    match result {
        Ok(answer) => panic!("{what}: expected {code:?}, got an answer: {answer:?}"),
        Err(status) => assert_eq!(status.code(), code, "{what}: {}", status.message()),
    }
}

#[tokio::test]
async fn tokens_and_roles_are_enforced_over_tls() {
    let lab = Lab::start(Options {
        mutual: false,
        submit_rate: None,
    })
    .await;
    let channel = lab.tls_channel(None).await;
    let mut campaigns = CampaignServiceClient::new(channel.clone());
    let mut agents = AgentServiceClient::new(channel.clone());
    let mut tokens = TokenServiceClient::new(channel.clone());

    // Loopback and no token ever created: open, as the existing tests rely on.
    campaigns
        .list_campaigns(authed(pb::ListCampaignsRequest {}, None))
        .await
        .expect("open before the first token");

    let operator = lab.bootstrap_token("admin", Role::Operator).await;
    // The authenticator re-reads the token table within its cache TTL.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let refused = campaigns
            .list_campaigns(authed(pb::ListCampaignsRequest {}, None))
            .await;
        if refused.is_err() {
            assert_code(refused, Code::Unauthenticated, "no token once tokens exist");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "tokens never enforced"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let wrong = token::generate().secret;
    assert_code(
        campaigns
            .list_campaigns(authed(pb::ListCampaignsRequest {}, Some(&wrong)))
            .await,
        Code::Unauthenticated,
        "a wrong token",
    );
    assert_code(
        campaigns
            .list_campaigns(authed(pb::ListCampaignsRequest {}, Some("not-a-token")))
            .await,
        Code::Unauthenticated,
        "a malformed token",
    );

    // The operator creates the other roles through the TokenService.
    let create = |name: &str, role: pb::TokenRole| {
        authed(
            pb::CreateTokenRequest {
                name: name.into(),
                role: role as i32,
            },
            Some(&operator),
        )
    };
    let viewer = tokens
        .create_token(create("dashboard", pb::TokenRole::Viewer))
        .await
        .unwrap()
        .into_inner()
        .secret;
    let agent = tokens
        .create_token(create("node1", pb::TokenRole::Agent))
        .await
        .unwrap()
        .into_inner()
        .secret;
    assert_code(
        tokens
            .create_token(create("dashboard", pb::TokenRole::Viewer))
            .await,
        Code::AlreadyExists,
        "a second live token with the same name",
    );

    // Operator: submits and reads.
    campaigns
        .submit(authed(submit_request("secure"), Some(&operator)))
        .await
        .expect("operator submits");
    // Viewer: reads, may not submit or manage tokens or speak the agent protocol.
    let listed = campaigns
        .list_campaigns(authed(pb::ListCampaignsRequest {}, Some(&viewer)))
        .await
        .expect("viewer reads")
        .into_inner();
    assert_eq!(listed.campaigns.len(), 1);
    assert_code(
        campaigns
            .submit(authed(submit_request("nope"), Some(&viewer)))
            .await,
        Code::PermissionDenied,
        "viewer submits",
    );
    assert_code(
        campaigns
            .cancel(authed(
                pb::CancelRequest {
                    campaign: "secure".into(),
                    reason: String::new(),
                },
                Some(&viewer),
            ))
            .await,
        Code::PermissionDenied,
        "viewer cancels",
    );
    assert_code(
        tokens
            .list_tokens(authed(pb::ListTokensRequest {}, Some(&viewer)))
            .await,
        Code::PermissionDenied,
        "viewer lists tokens",
    );
    assert_code(
        agents
            .register(authed(register_request("v"), Some(&viewer)))
            .await,
        Code::PermissionDenied,
        "viewer registers as an agent",
    );
    // Agent: the agent protocol only.
    assert_code(
        campaigns
            .list_campaigns(authed(pb::ListCampaignsRequest {}, Some(&agent)))
            .await,
        Code::PermissionDenied,
        "agent token on the CampaignService",
    );
    agents
        .register(authed(register_request("node1"), Some(&agent)))
        .await
        .expect("agent registers");
    assert_code(
        agents
            .register(authed(register_request("node2"), Some(&operator)))
            .await,
        Code::PermissionDenied,
        "operator token on the AgentService",
    );
    // Health needs no token.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health is public");

    // Revoking takes effect at once.
    tokens
        .revoke_token(authed(
            pb::RevokeTokenRequest {
                token: "dashboard".into(),
            },
            Some(&operator),
        ))
        .await
        .expect("operator revokes");
    assert_code(
        campaigns
            .list_campaigns(authed(pb::ListCampaignsRequest {}, Some(&viewer)))
            .await,
        Code::Unauthenticated,
        "a revoked token",
    );
    let listed = tokens
        .list_tokens(authed(pb::ListTokensRequest {}, Some(&operator)))
        .await
        .unwrap()
        .into_inner()
        .tokens;
    assert_eq!(listed.len(), 3);
    assert!(
        listed
            .iter()
            .any(|t| t.name == "dashboard" && t.revoked_ms > 0)
    );

    // Every refusal is audited with its request id; the submit names the token.
    let audit = lab.store.audit(100).await.unwrap();
    let refused: Vec<_> = audit.iter().filter(|e| e.action == "refused").collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut refused_count = refused.len();
    while refused_count < 9 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        refused_count = lab
            .store
            .audit(100)
            .await
            .unwrap()
            .iter()
            .filter(|e| e.action == "refused")
            .count();
    }
    let audit = lab.store.audit(100).await.unwrap();
    let refused: Vec<_> = audit.iter().filter(|e| e.action == "refused").collect();
    assert!(refused.len() >= 9, "refusals audited: {refused:#?}");
    for entry in &refused {
        let detail: serde_json::Value = serde_json::from_str(&entry.detail).unwrap();
        assert!(
            detail["request_id"]
                .as_str()
                .is_some_and(|id| !id.is_empty()),
            "{entry:?}"
        );
        assert!(entry.target.starts_with("rpc/evalctl.v1."), "{entry:?}");
    }
    assert!(
        audit
            .iter()
            .any(|e| e.action == "submit" && e.actor == "admin"),
        "the submit is audited under the token's name: {audit:#?}"
    );

    // The metrics endpoint counts calls and refusals.
    let text = scrape(lab.metrics.expect("metrics on")).await;
    for series in [
        "evalctl_rpc_requests_total{method=\"Submit\"}",
        "evalctl_rpc_refused_total{",
        "evalctl_units{state=\"pending\"} 1",
        "evalctl_campaigns{state=\"active\"} 1",
        "evalctl_agents{state=\"active\"} 1",
        "evalctl_lease_grant_seconds_bucket",
    ] {
        assert!(text.contains(series), "missing {series} in:\n{text}");
    }
    lab.stop().await;
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    tcp.read_to_string(&mut text).await.unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text
}

#[tokio::test]
async fn mutual_tls_refuses_agents_without_a_client_certificate() {
    let lab = Lab::start(Options {
        mutual: true,
        submit_rate: None,
    })
    .await;
    let agent = lab.bootstrap_token("node1", Role::Agent).await;
    let operator = lab.bootstrap_token("admin", Role::Operator).await;

    let mut anonymous = AgentServiceClient::new(lab.tls_channel(None).await);
    assert_code(
        anonymous
            .register(authed(register_request("node1"), Some(&agent)))
            .await,
        Code::Unauthenticated,
        "an agent without a client certificate",
    );
    // CLI users need no certificate.
    CampaignServiceClient::new(lab.tls_channel(None).await)
        .list_campaigns(authed(pb::ListCampaignsRequest {}, Some(&operator)))
        .await
        .expect("operator without a client certificate");

    let mut with_cert = AgentServiceClient::new(lab.tls_channel(Some("node1")).await);
    with_cert
        .register(authed(register_request("node1"), Some(&agent)))
        .await
        .expect("an agent with its certificate and token");
    assert_code(
        with_cert
            .register(authed(register_request("node1"), None))
            .await,
        Code::Unauthenticated,
        "a client certificate does not replace the token",
    );

    // A certificate from another CA fails the handshake.
    let other = tempfile::tempdir().unwrap();
    certs::generate(
        other.path(),
        &CertsRequest {
            hosts: vec!["127.0.0.1".into()],
            agents: vec!["node1".into()],
            days: 1,
            force: false,
        },
    )
    .unwrap();
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(
        std::fs::read(lab.certs.join("ca.pem")).unwrap(),
    ));
    tls = tls.identity(Identity::from_pem(
        std::fs::read(other.path().join("agent-node1.pem")).unwrap(),
        std::fs::read(other.path().join("agent-node1-key.pem")).unwrap(),
    ));
    let foreign = Endpoint::from_shared(format!("https://127.0.0.1:{}", lab.addr.port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await;
    let refused = match foreign {
        Err(_) => true,
        Ok(channel) => AgentServiceClient::new(channel)
            .register(authed(register_request("node1"), Some(&agent)))
            .await
            .is_err(),
    };
    assert!(refused, "a certificate from a foreign CA is refused");
    lab.stop().await;
}

#[tokio::test]
async fn a_reload_swaps_the_certificate_for_new_connections() {
    let lab = Lab::start(Options {
        mutual: false,
        submit_rate: None,
    })
    .await;
    let old_ca = lab.certs.join("old-ca.pem");
    std::fs::copy(lab.certs.join("ca.pem"), &old_ca).unwrap();
    lab.channel(&old_ca, None).await.expect("old CA before");

    certs::generate(
        &lab.certs,
        &CertsRequest {
            hosts: vec!["127.0.0.1".into()],
            agents: vec![],
            days: 2,
            force: true,
        },
    )
    .unwrap();
    lab.tls.reload().expect("reload");
    lab.channel(&lab.certs.join("ca.pem"), None)
        .await
        .expect("the new CA after the reload");
    let stale = lab.channel(&old_ca, None).await;
    let refused = match stale {
        Err(_) => true,
        Ok(channel) => CampaignServiceClient::new(channel)
            .list_campaigns(pb::ListCampaignsRequest {})
            .await
            .is_err(),
    };
    assert!(refused, "the old CA no longer verifies the server");

    // A broken file keeps the current configuration.
    std::fs::write(lab.certs.join("server.pem"), "garbage").unwrap();
    assert!(lab.tls.reload().is_err());
    lab.channel(&lab.certs.join("ca.pem"), None)
        .await
        .expect("still served after a failed reload");
    lab.stop().await;
}

#[tokio::test]
async fn submissions_are_rate_limited_per_token() {
    let lab = Lab::start(Options {
        mutual: false,
        submit_rate: Some(Rate {
            per_minute: 1,
            burst: 2,
        }),
    })
    .await;
    let alice = lab.bootstrap_token("alice", Role::Operator).await;
    let bob = lab.bootstrap_token("bob", Role::Operator).await;
    let mut campaigns = CampaignServiceClient::new(lab.tls_channel(None).await);
    for i in 0..2 {
        campaigns
            .submit(authed(submit_request(&format!("c{i}")), Some(&alice)))
            .await
            .expect("within the burst");
    }
    assert_code(
        campaigns
            .submit(authed(submit_request("c3"), Some(&alice)))
            .await,
        Code::ResourceExhausted,
        "past the burst",
    );
    campaigns
        .submit(authed(submit_request("c4"), Some(&bob)))
        .await
        .expect("another token has its own bucket");
    // Reads are not limited.
    for _ in 0..5 {
        campaigns
            .list_campaigns(authed(pb::ListCampaignsRequest {}, Some(&alice)))
            .await
            .unwrap();
    }
    lab.stop().await;
}

#[tokio::test]
async fn bounded_inputs_get_clear_statuses() {
    let lab = Lab::start(Options {
        mutual: false,
        submit_rate: None,
    })
    .await;
    let mut campaigns = CampaignServiceClient::new(lab.tls_channel(None).await)
        .max_encoding_message_size(64 * 1024 * 1024);
    let long = "x".repeat(10_000);
    assert_code(
        campaigns
            .get_campaign(pb::GetCampaignRequest {
                campaign: long.clone(),
            })
            .await,
        Code::InvalidArgument,
        "a campaign name over the limit",
    );
    let mut big = submit_request("big");
    big.matrix_yaml
        .push_str(&format!("# {}\n", "y".repeat(5 * 1024 * 1024)));
    assert_code(
        campaigns.submit(big).await,
        Code::InvalidArgument,
        "a matrix over 4 MiB",
    );
    let mut huge = submit_request("huge");
    huge.matrix_yaml
        .push_str(&format!("# {}\n", "y".repeat(17 * 1024 * 1024)));
    assert_code(
        campaigns.submit(huge).await,
        Code::OutOfRange,
        "a message over 16 MiB",
    );
    assert_code(
        campaigns
            .submit(pb::SubmitRequest {
                matrix_yaml: "campaign: [".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "a malformed matrix",
    );
    lab.stop().await;
}

/// Figures for docs and reviews, not a pass/fail check:
/// `cargo test -p evalctl-coordinator --test security -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run by hand"]
async fn measure_tls_overhead() {
    use std::time::Instant;
    let lab = Lab::start(Options {
        mutual: false,
        submit_rate: None,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::with_data_dir(dir.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    let plain = Coordinator::bind(config).await.unwrap();
    let plain_url = format!("http://{}", plain.local_addr());
    let stop = CancellationToken::new();
    tokio::spawn(plain.serve(stop.clone().cancelled_owned()));
    let operator = lab.bootstrap_token("admin", Role::Operator).await;

    const CONNECTIONS: u32 = 200;
    const CALLS: u32 = 5000;
    let started = Instant::now();
    for _ in 0..CONNECTIONS {
        let channel = lab.tls_channel(None).await;
        CampaignServiceClient::new(channel)
            .list_campaigns(authed(pb::ListCampaignsRequest {}, Some(&operator)))
            .await
            .unwrap();
    }
    let tls_connect = started.elapsed() / CONNECTIONS;
    let started = Instant::now();
    for _ in 0..CONNECTIONS {
        let channel = Endpoint::from_shared(plain_url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        CampaignServiceClient::new(channel)
            .list_campaigns(pb::ListCampaignsRequest {})
            .await
            .unwrap();
    }
    let plain_connect = started.elapsed() / CONNECTIONS;

    let mut tls = CampaignServiceClient::new(lab.tls_channel(None).await);
    let started = Instant::now();
    for _ in 0..CALLS {
        tls.list_campaigns(authed(pb::ListCampaignsRequest {}, Some(&operator)))
            .await
            .unwrap();
    }
    let tls_call = started.elapsed() / CALLS;
    let mut plain = CampaignServiceClient::new(
        Endpoint::from_shared(plain_url)
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let started = Instant::now();
    for _ in 0..CALLS {
        plain
            .list_campaigns(pb::ListCampaignsRequest {})
            .await
            .unwrap();
    }
    let plain_call = started.elapsed() / CALLS;
    println!(
        "new connection + first call: TLS+token {tls_connect:?}, plain {plain_connect:?}; \
         call on an open connection: TLS+token {tls_call:?}, plain {plain_call:?}"
    );
    stop.cancel();
    lab.stop().await;
}
