//! Fuzzing with proptest: random and mutated inputs for the matrix parser and for every
//! request the coordinator decodes. Nothing may panic; a request gets an answer or a clear
//! status (never `UNKNOWN`, `INTERNAL` or a dropped connection).
//!
//! Requests travel as raw bytes over real gRPC to a coordinator in this process, so the
//! server's own prost decoding, its limits and its conversion to domain types all run.
//! The default run is short (64 cases per property); a long run:
//!
//! ```sh
//! PROPTEST_CASES=20000 cargo test -p evalctl-coordinator --test fuzz_inputs --release
//! ```

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use evalctl_coordinator::auth::rate::Rate;
use evalctl_coordinator::auth::{Role, token};
use evalctl_coordinator::config::Config;
use evalctl_coordinator::matrix;
use evalctl_coordinator::server::Coordinator;
use evalctl_proto::v1 as pb;
use proptest::prelude::*;
use prost::Message;
use prost::bytes::{Buf, BufMut, Bytes};
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

// ---- a codec that sends and receives raw bytes ----

#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

#[derive(Debug, Clone, Copy, Default)]
struct RawEncoder;

#[derive(Debug, Clone, Copy, Default)]
struct RawDecoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

// ---- the coordinator under test ----

struct Target {
    runtime: tokio::runtime::Runtime,
    channel: Channel,
    /// Tokens are enforced (a fuzzed `CreateToken` would turn them on anyway).
    operator: String,
    agent: String,
    _dir: tempfile::TempDir,
}

fn target() -> &'static Target {
    static TARGET: OnceLock<Target> = OnceLock::new();
    TARGET.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (channel, operator, agent) = runtime.block_on(async {
            let mut config = Config::with_data_dir(dir.path());
            config.listen = "127.0.0.1:0".parse().unwrap();
            config.lease_ttl = Duration::from_secs(5);
            config.submit_rate = Rate {
                per_minute: 0,
                burst: 0,
            };
            let coordinator = Coordinator::bind(config).await.unwrap();
            let mut secrets = Vec::new();
            for (name, role) in [
                ("fuzz-operator", Role::Operator),
                ("fuzz-agent", Role::Agent),
            ] {
                let secret = token::generate();
                coordinator
                    .store()
                    .create_token(&secret.token_id, name, role, secret.hash, "fuzz")
                    .await
                    .unwrap();
                secrets.push(secret.secret);
            }
            let url = format!("http://{}", coordinator.local_addr());
            tokio::spawn(coordinator.serve(std::future::pending()));
            let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();
            (channel, secrets.remove(0), secrets.remove(0))
        });
        Target {
            runtime,
            channel,
            operator,
            agent,
            _dir: dir,
        }
    })
}

/// How a method is called.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Unary,
    ServerStream,
    ClientStream,
}

/// Every RPC the coordinator serves, with a valid request to mutate.
fn methods() -> Vec<(&'static str, Kind, Vec<u8>)> {
    let quickstart = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../matrices/quickstart.yaml"),
    )
    .unwrap();
    let campaign = "/evalctl.v1.CampaignService/";
    let agent = "/evalctl.v1.AgentService/";
    let tokens = "/evalctl.v1.TokenService/";
    let named = |c: &str| pb::GetCampaignRequest { campaign: c.into() }.encode_to_vec();
    let registration = pb::RegisterRequest {
        agent_id: "fuzz-agent".into(),
        hostname: "fuzz".into(),
        gpus: vec![pb::GpuInfo {
            index: 0,
            uuid: "GPU-0".into(),
            gpu_type: "H100-80GB".into(),
            name: "NVIDIA H100".into(),
            memory_gb: 80.0,
        }],
        labels: [("zone".to_owned(), "a".to_owned())].into(),
        ..Default::default()
    };
    let lease_id = "00000000-0000-4000-8000-000000000000".to_owned();
    vec![
        (
            "Submit",
            Kind::Unary,
            pb::SubmitRequest {
                matrix_yaml: quickstart,
                source_name: "quickstart.yaml".into(),
                dry_run: false,
                submitted_by: "fuzz".into(),
                allow_empty: false,
            }
            .encode_to_vec(),
        ),
        ("ListCampaigns", Kind::Unary, Vec::new()),
        ("GetCampaign", Kind::Unary, named("quickstart")),
        ("Watch", Kind::ServerStream, named("quickstart")),
        (
            "Cancel",
            Kind::Unary,
            pb::CancelRequest {
                campaign: "quickstart".into(),
                reason: "fuzz".into(),
            }
            .encode_to_vec(),
        ),
        ("Retry", Kind::Unary, named("quickstart")),
        ("ListUnits", Kind::Unary, named("quickstart")),
        ("Results", Kind::ServerStream, named("quickstart")),
        ("ListAgents", Kind::Unary, Vec::new()),
        (
            "Drain",
            Kind::Unary,
            pb::DrainRequest {
                agent_id: "nobody".into(),
            }
            .encode_to_vec(),
        ),
        ("Register", Kind::Unary, registration.encode_to_vec()),
        (
            "AcquireLease",
            Kind::Unary,
            pb::AcquireLeaseRequest {
                agent_id: "fuzz-agent".into(),
                free_gpu_indices: vec![0],
                cpu_slots_free: 1,
                wait_ms: 0,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "Heartbeat",
            Kind::Unary,
            pb::HeartbeatRequest {
                agent_id: "fuzz-agent".into(),
                leases: vec![pb::LeaseProgress {
                    lease_id: lease_id.clone(),
                    epoch: 1,
                    ..Default::default()
                }],
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "ReportResults",
            Kind::ClientStream,
            pb::ResultBatch {
                lease_id: lease_id.clone(),
                epoch: 1,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "Complete",
            Kind::Unary,
            pb::CompleteRequest {
                lease_id: lease_id.clone(),
                epoch: 1,
            }
            .encode_to_vec(),
        ),
        (
            "Fail",
            Kind::Unary,
            pb::FailRequest {
                lease_id: lease_id.clone(),
                epoch: 1,
                error: "boom".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "Release",
            Kind::Unary,
            pb::ReleaseRequest {
                lease_id,
                epoch: 1,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "CreateToken",
            Kind::Unary,
            pb::CreateTokenRequest {
                name: "fuzz".into(),
                role: pb::TokenRole::Viewer as i32,
            }
            .encode_to_vec(),
        ),
        ("ListTokens", Kind::Unary, Vec::new()),
        (
            "RevokeToken",
            Kind::Unary,
            pb::RevokeTokenRequest {
                token: "tok_000000000000".into(),
            }
            .encode_to_vec(),
        ),
        (
            "ListAudit",
            Kind::Unary,
            pb::ListAuditRequest {
                actor: "fuzz".into(),
                action: "refused".into(),
                since_ms: 1,
                until_ms: 2_000_000_000_000,
                limit: 10,
                before_id: 5,
            }
            .encode_to_vec(),
        ),
    ]
    .into_iter()
    .map(|(name, kind, seed)| {
        let service = match name {
            "Register" | "AcquireLease" | "Heartbeat" | "ReportResults" | "Complete" | "Fail"
            | "Release" => agent,
            "CreateToken" | "ListTokens" | "RevokeToken" | "ListAudit" => tokens,
            _ => campaign,
        };
        (leak(format!("{service}{name}")), kind, seed)
    })
    .collect()
}

fn leak(text: String) -> &'static str {
    Box::leak(text.into_boxed_str())
}

/// A request carrying `token`.
fn authed<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value = format!("Bearer {token}").parse().expect("token is ASCII");
    request.metadata_mut().insert("authorization", value);
    request
}

/// Sends `body` to `path` with `token` and returns the status (OK when it answered).
async fn call(
    channel: Channel,
    token: &str,
    path: &'static str,
    kind: Kind,
    body: Bytes,
) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    if let Err(err) = grpc.ready().await {
        return tonic::Status::unavailable(err.to_string());
    }
    let path = http::uri::PathAndQuery::from_static(path);
    let outcome = match kind {
        Kind::Unary => grpc
            .unary(authed(body, token), path, RawCodec)
            .await
            .map(|_| ()),
        Kind::ServerStream => match grpc
            .server_streaming(authed(body, token), path, RawCodec)
            .await
        {
            Ok(mut stream) => {
                // The first message or the end, whichever comes first; then hang up.
                let _ =
                    tokio::time::timeout(Duration::from_millis(200), stream.get_mut().message())
                        .await;
                Ok(())
            }
            Err(status) => Err(status),
        },
        Kind::ClientStream => {
            let half = body.len() / 2;
            let messages = vec![body.slice(..half), body.slice(half..), body];
            let stream = tokio_stream::iter(messages);
            match grpc.streaming(authed(stream, token), path, RawCodec).await {
                Ok(mut acks) => match acks.get_mut().message().await {
                    Ok(_) => Ok(()),
                    Err(status) => Err(status),
                },
                Err(status) => Err(status),
            }
        }
    };
    match outcome {
        Ok(()) => tonic::Status::ok(""),
        Err(status) => status,
    }
}

/// Mutations of a valid message: byte flips, insertions, deletions, truncation.
fn mutate(seed: &[u8], edits: &[(usize, u8, u8)]) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for &(at, op, value) in edits {
        let at = if bytes.is_empty() {
            0
        } else {
            at % (bytes.len() + 1)
        };
        match op % 5 {
            0 if at < bytes.len() => bytes[at] ^= value | 1,
            1 => bytes.insert(at, value),
            2 if at < bytes.len() => {
                bytes.remove(at);
            }
            3 => bytes.truncate(at),
            _ => {
                // A varint that claims a huge length.
                bytes.splice(at..at, [value | 0x80, 0xff, 0xff, 0xff, 0x0f]);
            }
        }
    }
    bytes
}

fn check(path: &str, status: &tonic::Status) -> Result<(), TestCaseError> {
    prop_assert!(
        !matches!(
            status.code(),
            Code::Unknown | Code::Internal | Code::Unavailable
        ),
        "{path} answered {:?}: {}",
        status.code(),
        status.message()
    );
    Ok(())
}

fn run(path: &'static str, kind: Kind, body: Vec<u8>) -> Result<(), TestCaseError> {
    let target = target();
    let channel = target.channel.clone();
    let token = if path.contains("AgentService") {
        target.agent.as_str()
    } else {
        target.operator.as_str()
    };
    let status = target.runtime.block_on(async move {
        match tokio::time::timeout(
            Duration::from_secs(5),
            call(channel, token, path, kind, Bytes::from(body)),
        )
        .await
        {
            Ok(status) => status,
            // A long poll (AcquireLease with a large wait) is an answer in the making.
            Err(_) => tonic::Status::deadline_exceeded("client gave up"),
        }
    });
    check(path, &status)
}

fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn matrices() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../matrices");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect()
}

/// Bytes that make YAML structure, so mutations reach past the tokenizer.
fn yaml_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        4 => prop::sample::select(b":-{}[],#&*!|>'\"%@` \n\t0123456789.einfatrue~".to_vec()),
        1 => any::<u8>(),
    ]
}

proptest! {
    #![proptest_config(cases(64))]

    #[test]
    fn the_matrix_parser_survives_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = matrix::expand_str("fuzz.yaml", &text);
    }

    #[test]
    fn the_matrix_parser_survives_mutated_matrices(
        which in any::<prop::sample::Index>(),
        edits in prop::collection::vec((any::<usize>(), 0u8..4, yaml_byte()), 1..12),
    ) {
        let all = matrices();
        let seed = which.get(&all);
        let mutated = mutate(seed.as_bytes(), &edits);
        let text = String::from_utf8_lossy(&mutated);
        let _ = matrix::expand_str("fuzz.yaml", &text);
    }

    #[test]
    fn every_request_decoder_survives_random_bytes(
        which in any::<prop::sample::Index>(),
        bytes in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let all = methods();
        let (path, kind, _) = which.get(&all);
        run(path, *kind, bytes)?;
    }

    #[test]
    fn every_request_decoder_survives_mutated_valid_requests(
        which in any::<prop::sample::Index>(),
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 0..8),
    ) {
        let all = methods();
        let (path, kind, seed) = which.get(&all);
        run(path, *kind, mutate(seed, &edits))?;
    }
}
