//! Who did what, and who may be which agent, over real TLS on loopback: a coordinator served
//! in this process with certificates from `gen-certs` (and a second CA for the subject
//! alternative names `gen-certs` does not write), called with tonic clients.
//!
//! - Refusals of a valid token are audited under the token's name (issue 17, item 4).
//! - `ListAudit` filters on the server, pages, and is for operators only; tokens record
//!   when they were last used (item 4).
//! - Under mutual TLS a client certificate acts only as the agent ids its subject
//!   alternative names, or the operator's map, allow (item 5).

use std::path::PathBuf;
use std::time::Duration;

use evalctl_coordinator::auth::identity::AgentCertMap;
use evalctl_coordinator::auth::rate::Rate;
use evalctl_coordinator::auth::{Role, token};
use evalctl_coordinator::config::Config;
use evalctl_coordinator::limits::MAX_AUDIT_PAGE;
use evalctl_coordinator::server::{Coordinator, ServeError};
use evalctl_coordinator::store::Store;
use evalctl_coordinator::tls::certs::{self, CertsRequest};
use evalctl_proto::v1 as pb;
use evalctl_proto::v1::agent_service_client::AgentServiceClient;
use evalctl_proto::v1::campaign_service_client::CampaignServiceClient;
use evalctl_proto::v1::token_service_client::TokenServiceClient;
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Agents `gen-certs` issues certificates for (each with its name as a DNS SAN).
const GEN_CERTS_AGENTS: [&str; 3] = ["node1", "node2", "pool.lab"];

/// The URI SAN of `agent-uri.pem`, issued by the second CA.
const RACK_URI: &str = "spiffe://lab/rack1";

/// A coordinator serving TLS in this process.
struct Lab {
    _dir: tempfile::TempDir,
    certs: PathBuf,
    addr: std::net::SocketAddr,
    store: Store,
    stop: CancellationToken,
    task: JoinHandle<Result<(), ServeError>>,
}

#[derive(Default)]
struct Options {
    /// Client CA: `gen-certs`' CA and the second CA.
    mutual: bool,
    submit_rate: Option<Rate>,
    agent_cert_map: AgentCertMap,
}

impl Lab {
    async fn start(options: Options) -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        certs::generate(
            &certs,
            &CertsRequest {
                hosts: vec!["localhost".into(), "127.0.0.1".into()],
                agents: GEN_CERTS_AGENTS.iter().map(|a| (*a).to_owned()).collect(),
                days: 2,
                force: false,
            },
        )
        .unwrap();
        let second_ca = issue_san_variants(&certs);
        let client_ca = certs.join("client-ca.pem");
        let mut bundle = std::fs::read_to_string(certs.join("ca.pem")).unwrap();
        bundle.push_str(&second_ca);
        std::fs::write(&client_ca, bundle).unwrap();

        let mut config = Config::with_data_dir(dir.path());
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.shutdown_grace = Duration::from_secs(2);
        config
            .set_tls(
                Some(certs.join("server.pem")),
                Some(certs.join("server-key.pem")),
                options.mutual.then_some(client_ca),
            )
            .unwrap();
        if let Some(rate) = options.submit_rate {
            config.submit_rate = rate;
        }
        config.agent_cert_map = options.agent_cert_map;
        let coordinator = Coordinator::bind(config).await.expect("coordinator binds");
        let addr = coordinator.local_addr();
        let store = coordinator.store().clone();
        let stop = CancellationToken::new();
        let task = tokio::spawn(coordinator.serve(stop.clone().cancelled_owned()));
        Lab {
            _dir: dir,
            certs,
            addr,
            store,
            stop,
            task,
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().expect("coordinator stops cleanly");
    }

    /// A TLS channel presenting `agent-<identity>.pem`, or no client certificate.
    async fn channel(&self, identity: Option<&str>) -> Channel {
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(
            std::fs::read(self.certs.join("ca.pem")).unwrap(),
        ));
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
            .expect("TLS connection")
    }

    async fn tokens(&self) -> TokenServiceClient<Channel> {
        TokenServiceClient::new(self.channel(None).await)
    }

    /// An operator token created on the store (the bootstrap); returns once the
    /// coordinator enforces tokens and accepts it.
    async fn bootstrap(&self, name: &str) -> String {
        let secret = token::generate();
        self.store
            .create_token(&secret.token_id, name, Role::Operator, secret.hash, "test")
            .await
            .unwrap();
        let mut tokens = self.tokens().await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let listed = tokens
                .list_tokens(authed(pb::ListTokensRequest {}, Some(&secret.secret)))
                .await;
            let enforced = tokens
                .list_tokens(authed(pb::ListTokensRequest {}, None))
                .await
                .is_err_and(|s| s.code() == Code::Unauthenticated);
            if listed.is_ok() && enforced {
                return secret.secret;
            }
            assert!(Instant::now() < deadline, "token {name} never accepted");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A token created through the API by `operator` (in effect at once).
    async fn create(&self, operator: &str, name: &str, role: pb::TokenRole) -> String {
        self.tokens()
            .await
            .create_token(authed(
                pb::CreateTokenRequest {
                    name: name.into(),
                    role: role as i32,
                },
                Some(operator),
            ))
            .await
            .unwrap()
            .into_inner()
            .secret
    }

    /// Audit entries matching `request`, asked for as `operator`.
    async fn audit(&self, operator: &str, request: pb::ListAuditRequest) -> pb::ListAuditResponse {
        self.tokens()
            .await
            .list_audit(authed(request, Some(operator)))
            .await
            .expect("operator lists the audit log")
            .into_inner()
    }

    /// Waits until the audit log has at least `n` entries matching `request` (refusals
    /// are audited after the answer), and returns them.
    async fn audit_eventually(
        &self,
        operator: &str,
        request: pb::ListAuditRequest,
        n: usize,
    ) -> Vec<pb::AuditEntry> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let entries = self.audit(operator, request.clone()).await.entries;
            if entries.len() >= n {
                return entries;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} entries for {request:?}, got {entries:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Signs, with a second CA, client certificates with the names `gen-certs` does not write:
/// `agent-uri.pem` (a URI SAN only) and `agent-cn-only.pem` (the common name `node1` and no
/// SAN, as certificates of older `gen-certs` builds). Returns the second CA's PEM.
fn issue_san_variants(certs: &std::path::Path) -> String {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "second test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let variants = [
        ("uri", vec![SanType::URI(RACK_URI.try_into().unwrap())]),
        ("cn-only", vec![]),
    ];
    for (name, sans) in variants {
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.distinguished_name.push(DnType::CommonName, "node1");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(certs.join(format!("agent-{name}.pem")), cert.pem()).unwrap();
        std::fs::write(
            certs.join(format!("agent-{name}-key.pem")),
            key.serialize_pem(),
        )
        .unwrap();
    }
    ca_cert.pem()
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

fn submit_request(campaign: &str) -> pb::SubmitRequest {
    pb::SubmitRequest {
        matrix_yaml: format!(
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
        ),
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

fn by(actor: &str, action: &str) -> pb::ListAuditRequest {
    pb::ListAuditRequest {
        actor: actor.into(),
        action: action.into(),
        ..Default::default()
    }
}

fn detail(entry: &pb::AuditEntry) -> serde_json::Value {
    serde_json::from_str(&entry.detail_json).unwrap()
}

#[track_caller]
fn assert_refused<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: Code,
    needles: &[&str],
) -> String {
    match result {
        Ok(answer) => panic!("expected {code:?}, got an answer: {answer:?}"),
        Err(status) => {
            assert_eq!(status.code(), code, "{}", status.message());
            for needle in needles {
                assert!(
                    status.message().contains(needle),
                    "`{needle}` missing in: {}",
                    status.message()
                );
            }
            status.message().to_owned()
        }
    }
}

#[tokio::test]
async fn refusals_of_a_valid_token_are_audited_under_its_name() {
    let lab = Lab::start(Options {
        mutual: true,
        submit_rate: Some(Rate {
            per_minute: 1,
            burst: 1,
        }),
        ..Options::default()
    })
    .await;
    let admin = lab.bootstrap("admin").await;
    let agent = lab.create(&admin, "fleet", pb::TokenRole::Agent).await;
    let mut campaigns = CampaignServiceClient::new(lab.channel(None).await);
    campaigns
        .submit(authed(submit_request("c1"), Some(&admin)))
        .await
        .expect("within the burst");
    assert_refused(
        campaigns
            .submit(authed(submit_request("c2"), Some(&admin)))
            .await,
        Code::ResourceExhausted,
        &["too many submissions"],
    );
    let mut no_cert = AgentServiceClient::new(lab.channel(None).await);
    assert_refused(
        no_cert
            .register(authed(register_request("node1"), Some(&agent)))
            .await,
        Code::Unauthenticated,
        &["client certificate"],
    );
    let unknown = token::generate().secret;
    assert_refused(
        no_cert
            .register(authed(register_request("node1"), Some(&unknown)))
            .await,
        Code::Unauthenticated,
        &["client certificate"],
    );

    let limited = lab
        .audit_eventually(&admin, by("admin", "refused"), 1)
        .await;
    assert_eq!(
        detail(&limited[0])["reason"],
        "rate_limited",
        "{limited:#?}"
    );
    assert_eq!(limited[0].target, "rpc/evalctl.v1.CampaignService/Submit");
    let no_cert = lab
        .audit_eventually(&admin, by("fleet", "refused"), 1)
        .await;
    assert_eq!(
        detail(&no_cert[0])["reason"],
        "client_cert_required",
        "{no_cert:#?}"
    );
    assert_eq!(no_cert[0].target, "rpc/evalctl.v1.AgentService/Register");
    // A token that matches nothing names nobody.
    let anonymous = lab
        .audit_eventually(&admin, by("unauthenticated", "refused"), 1)
        .await;
    assert!(
        anonymous
            .iter()
            .any(|e| detail(e)["reason"] == "client_cert_required"),
        "{anonymous:#?}"
    );
    lab.stop().await;
}

#[tokio::test]
async fn the_audit_log_is_filtered_and_paged_on_the_server_for_operators_only() {
    let lab = Lab::start(Options::default()).await;
    let admin = lab.bootstrap("admin").await;
    let ci = lab.create(&admin, "ci", pb::TokenRole::Operator).await;
    let viewer = lab.create(&admin, "dash", pb::TokenRole::Viewer).await;
    let mut campaigns = CampaignServiceClient::new(lab.channel(None).await);
    for name in ["c1", "c2", "c3"] {
        campaigns
            .submit(authed(submit_request(name), Some(&ci)))
            .await
            .unwrap();
    }
    campaigns
        .cancel(authed(
            pb::CancelRequest {
                campaign: "c1".into(),
                reason: "not needed".into(),
            },
            Some(&admin),
        ))
        .await
        .unwrap();

    // Viewers may not read the audit log; the answer names the role needed.
    let mut tokens = lab.tokens().await;
    assert_refused(
        tokens
            .list_audit(authed(pb::ListAuditRequest::default(), Some(&viewer)))
            .await,
        Code::PermissionDenied,
        &[
            "token `dash` has role viewer",
            "ListAudit needs the operator role",
        ],
    );
    let refused = lab.audit_eventually(&admin, by("dash", "refused"), 1).await;
    assert_eq!(refused[0].target, "rpc/evalctl.v1.TokenService/ListAudit");

    // Filters by actor and action, newest first.
    let submits = lab.audit(&admin, by("ci", "submit")).await;
    assert_eq!(submits.entries.len(), 3, "{submits:#?}");
    assert_eq!(submits.next_before_id, 0);
    let targets: Vec<&str> = submits.entries.iter().map(|e| e.target.as_str()).collect();
    assert!(
        targets[0].ends_with("c3") && targets[2].ends_with("c1"),
        "{targets:?}"
    );
    let cancels = lab.audit(&admin, by("", "cancel")).await.entries;
    assert_eq!(cancels.len(), 1);
    assert_eq!(cancels[0].actor, "admin");
    let by_ci = lab.audit(&admin, by("ci", "")).await.entries;
    assert!(by_ci.iter().all(|e| e.actor == "ci") && by_ci.len() == 3);

    // Pages follow the cursor.
    let first = lab
        .audit(
            &admin,
            pb::ListAuditRequest {
                limit: 2,
                ..by("ci", "submit")
            },
        )
        .await;
    assert_eq!(first.entries.len(), 2);
    assert_ne!(first.next_before_id, 0);
    let second = lab
        .audit(
            &admin,
            pb::ListAuditRequest {
                limit: 2,
                before_id: first.next_before_id,
                ..by("ci", "submit")
            },
        )
        .await;
    assert_eq!(second.entries.len(), 1);
    assert_eq!(second.entries[0].audit_id, submits.entries[2].audit_id);
    assert_eq!(second.next_before_id, 0);

    // A time range, bounds included.
    let oldest = &submits.entries[2];
    let up_to_oldest = lab
        .audit(
            &admin,
            pb::ListAuditRequest {
                until_ms: oldest.at_ms,
                ..by("ci", "submit")
            },
        )
        .await
        .entries;
    assert!(up_to_oldest.iter().any(|e| e.audit_id == oldest.audit_id));
    assert!(up_to_oldest.iter().all(|e| e.at_ms <= oldest.at_ms));
    let after_all = lab
        .audit(
            &admin,
            pb::ListAuditRequest {
                since_ms: submits.entries[0].at_ms + 1,
                ..by("ci", "submit")
            },
        )
        .await;
    assert!(after_all.entries.is_empty(), "{after_all:#?}");
    assert_refused(
        tokens
            .list_audit(authed(
                pb::ListAuditRequest {
                    since_ms: 20,
                    until_ms: 10,
                    ..Default::default()
                },
                Some(&admin),
            ))
            .await,
        Code::InvalidArgument,
        &["`since_ms`"],
    );

    // However much is asked for, one reply holds at most a bounded page.
    let writes: Vec<_> = (0..MAX_AUDIT_PAGE + 5)
        .map(|i| {
            lab.store
                .record_audit("bulk", "test", "thing", serde_json::json!({ "i": i }))
        })
        .collect();
    for written in futures::future::join_all(writes).await {
        written.unwrap();
    }
    let capped = lab
        .audit(
            &admin,
            pb::ListAuditRequest {
                limit: 1_000_000,
                ..by("bulk", "")
            },
        )
        .await;
    assert_eq!(capped.entries.len(), MAX_AUDIT_PAGE);
    assert_ne!(capped.next_before_id, 0);
    lab.stop().await;
}

#[tokio::test]
async fn tokens_record_when_they_last_authenticated_a_call() {
    let lab = Lab::start(Options::default()).await;
    let admin = lab.bootstrap("admin").await;
    let viewer = lab.create(&admin, "dash", pb::TokenRole::Viewer).await;
    let last_used = |name: &'static str| {
        let admin = admin.clone();
        let lab = &lab;
        async move {
            lab.tokens()
                .await
                .list_tokens(authed(pb::ListTokensRequest {}, Some(&admin)))
                .await
                .unwrap()
                .into_inner()
                .tokens
                .into_iter()
                .find(|t| t.name == name)
                .unwrap()
        }
    };
    assert_eq!(last_used("dash").await.last_used_ms, 0, "never used yet");
    let mut campaigns = CampaignServiceClient::new(lab.channel(None).await);
    for _ in 0..20 {
        campaigns
            .list_campaigns(authed(pb::ListCampaignsRequest {}, Some(&viewer)))
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let dash = loop {
        let dash = last_used("dash").await;
        if dash.last_used_ms > 0 {
            break dash;
        }
        assert!(Instant::now() < deadline, "last use never recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(dash.last_used_ms >= dash.created_ms, "{dash:?}");
    assert!(last_used("admin").await.last_used_ms > 0);
    lab.stop().await;
}

#[tokio::test]
async fn a_client_certificate_acts_only_as_the_agent_ids_it_names() {
    let lab = Lab::start(Options {
        mutual: true,
        agent_cert_map: AgentCertMap::from_flags(&[
            "pool.lab=gpu-*".to_owned(),
            format!("{RACK_URI}=rack1-*"),
        ])
        .unwrap(),
        ..Options::default()
    })
    .await;
    let admin = lab.bootstrap("admin").await;
    let fleet = lab.create(&admin, "fleet", pb::TokenRole::Agent).await;
    let register = |identity: &'static str, agent: &'static str| {
        let lab = &lab;
        let fleet = fleet.clone();
        async move {
            AgentServiceClient::new(lab.channel(Some(identity)).await)
                .register(authed(register_request(agent), Some(&fleet)))
                .await
        }
    };

    // A DNS SAN names the one agent id it may use.
    register("node1", "node1").await.expect("node1 as itself");
    register("node2", "node2").await.expect("node2 as itself");
    assert_refused(
        register("node1", "node2").await,
        Code::PermissionDenied,
        &[
            "DNS:node1",
            "agent id `node2`",
            "--agent-cert-map 'node1=node2'",
        ],
    );
    // The operator's map: a name may act as the agent ids matching its patterns.
    register("pool.lab", "gpu-07")
        .await
        .expect("pool.lab as gpu-07");
    register("pool.lab", "pool.lab")
        .await
        .expect("pool.lab as itself");
    assert_refused(
        register("pool.lab", "cpu-01").await,
        Code::PermissionDenied,
        &["DNS:pool.lab", "`cpu-01`"],
    );
    register("uri", "rack1-a")
        .await
        .expect("a URI SAN through the map");
    assert_refused(
        register("uri", "node1").await,
        Code::PermissionDenied,
        &["URI:spiffe://lab/rack1", "`node1`"],
    );
    // The common name does not count.
    assert_refused(
        register("cn-only", "node1").await,
        Code::PermissionDenied,
        &["names: none", "`node1`", "gen-certs"],
    );

    // Every later call that names an agent id is bound too.
    let mut node1 = AgentServiceClient::new(lab.channel(Some("node1")).await);
    let mut node2 = AgentServiceClient::new(lab.channel(Some("node2")).await);
    let heartbeat = |agent: &str, leases: Vec<pb::LeaseProgress>| {
        authed(
            pb::HeartbeatRequest {
                agent_id: agent.into(),
                leases,
                draining: false,
            },
            Some(&fleet),
        )
    };
    let ask = |agent: &str| {
        authed(
            pb::AcquireLeaseRequest {
                agent_id: agent.into(),
                cpu_slots_free: 1,
                wait_ms: 2_000,
                ..Default::default()
            },
            Some(&fleet),
        )
    };
    assert_refused(
        node2.heartbeat(heartbeat("node1", vec![])).await,
        Code::PermissionDenied,
        &["DNS:node2", "`node1`"],
    );
    assert_refused(
        node2.acquire_lease(ask("node1")).await,
        Code::PermissionDenied,
        &["DNS:node2", "`node1`"],
    );

    // And so is every call that names a lease: only its agent's certificate may use it.
    CampaignServiceClient::new(lab.channel(None).await)
        .submit(authed(submit_request("bound"), Some(&admin)))
        .await
        .unwrap();
    let lease = node1
        .acquire_lease(ask("node1"))
        .await
        .unwrap()
        .into_inner()
        .lease
        .expect("node1 gets the unit");
    let fenced = (lease.lease_id.clone(), lease.epoch);
    let lease_needles = ["DNS:node2", "`node1`", lease.lease_id.as_str()];
    assert_refused(
        node2
            .complete(authed(
                pb::CompleteRequest {
                    lease_id: fenced.0.clone(),
                    epoch: fenced.1,
                },
                Some(&fleet),
            ))
            .await,
        Code::PermissionDenied,
        &lease_needles,
    );
    assert_refused(
        node2
            .fail(authed(
                pb::FailRequest {
                    lease_id: fenced.0.clone(),
                    epoch: fenced.1,
                    error: "poisoned".into(),
                    ..Default::default()
                },
                Some(&fleet),
            ))
            .await,
        Code::PermissionDenied,
        &lease_needles,
    );
    assert_refused(
        node2
            .release(authed(
                pb::ReleaseRequest {
                    lease_id: fenced.0.clone(),
                    epoch: fenced.1,
                    reason: "shutdown".into(),
                },
                Some(&fleet),
            ))
            .await,
        Code::PermissionDenied,
        &lease_needles,
    );
    let batch = pb::ResultBatch {
        lease_id: fenced.0.clone(),
        epoch: fenced.1,
        unit_id: lease.unit_id.clone(),
        attempt: lease.attempt,
        sequence: 1,
        results: vec![],
    };
    let mut acks = node2
        .report_results(authed(tokio_stream::iter(vec![batch]), Some(&fleet)))
        .await
        .expect("the stream opens")
        .into_inner();
    assert_refused(acks.message().await, Code::PermissionDenied, &lease_needles);

    // The holder's own certificate still works, and nothing was taken from it.
    let beat = node1
        .heartbeat(heartbeat(
            "node1",
            vec![pb::LeaseProgress {
                lease_id: fenced.0.clone(),
                epoch: fenced.1,
                ..Default::default()
            }],
        ))
        .await
        .expect("node1 heartbeats its lease")
        .into_inner();
    assert_eq!(beat.valid_lease_ids, std::slice::from_ref(&fenced.0));
    node1
        .release(authed(
            pb::ReleaseRequest {
                lease_id: fenced.0.clone(),
                epoch: fenced.1,
                reason: "shutdown".into(),
            },
            Some(&fleet),
        ))
        .await
        .expect("node1 releases its lease");

    // Each refusal is audited under the token, naming the certificate and the agent id.
    let refused = lab
        .audit_eventually(&admin, by("fleet", "refused"), 10)
        .await;
    let identity: Vec<_> = refused
        .iter()
        .map(detail)
        .filter(|d| d["reason"] == "agent_identity")
        .collect();
    assert_eq!(identity.len(), 10, "{refused:#?}");
    assert!(
        identity
            .iter()
            .any(|d| d["certificate_names"] == "DNS:node1" && d["agent_id"] == "node2"),
        "{identity:#?}"
    );
    assert!(
        identity
            .iter()
            .any(|d| d["lease_id"] == fenced.0.as_str() && d["agent_id"] == "node1"),
        "{identity:#?}"
    );
    lab.stop().await;
}
