//! Connection to the coordinator's `CampaignService` and `TokenService`.
//!
//! TLS and the bearer token come from the global flags (`--token`, `--token-file`,
//! `--ca-file`, or `EVALCTL_TOKEN`, `EVALCTL_TOKEN_FILE`, `EVALCTL_CA_FILE`), set once per
//! invocation by [`configure`]; every command then connects with [`connect`].

use std::sync::OnceLock;

use evalctl_proto::client::{
    self as agent_client, BearerToken, ClientAuth, ClientError, TlsProblem,
};
use evalctl_proto::v1::campaign_service_client::CampaignServiceClient;
use evalctl_proto::v1::schedule_service_client::ScheduleServiceClient;
use evalctl_proto::v1::token_service_client::TokenServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::cli::GlobalArgs;
use crate::error::CliError;

/// Largest message the CLI accepts (a campaign with many units comes back in one reply).
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// A channel that sends the bearer token with every call.
pub type AuthedChannel = InterceptedService<Channel, BearerToken>;

/// A connected campaign client.
pub type Client = CampaignServiceClient<AuthedChannel>;

/// A connected token client.
pub type TokenClient = TokenServiceClient<AuthedChannel>;

/// A connected schedule client.
pub type ScheduleClient = ScheduleServiceClient<AuthedChannel>;

/// TLS settings and token of this invocation.
static AUTH: OnceLock<ClientAuth> = OnceLock::new();

/// Reads the token (flag, env or file) and TLS settings of this invocation; later calls
/// keep the first settings.
pub fn configure(global: &GlobalArgs) -> Result<(), CliError> {
    let token = agent_client::read_token(global.token.as_deref(), global.token_file.as_deref())
        .map_err(|err| setup_error(&global.coordinator, err))?;
    let _ = AUTH.set(ClientAuth {
        token,
        ca_file: global.ca_file.clone(),
        client_cert: None,
        client_key: None,
    });
    Ok(())
}

fn setup_error(url: &str, err: ClientError) -> CliError {
    match err {
        ClientError::Read { path, source, .. } => CliError::Read { path, source },
        ClientError::Endpoint { source, .. } => CliError::BadUrl {
            url: url.to_owned(),
            source,
        },
        other => CliError::Read {
            path: "<token>".into(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, other.to_string()),
        },
    }
}

async fn channel(url: &str) -> Result<AuthedChannel, CliError> {
    let auth = AUTH.get().cloned().unwrap_or_default();
    let bearer = BearerToken::new(auth.token.as_deref()).map_err(|e| setup_error(url, e))?;
    let endpoint = agent_client::endpoint(url, &auth).map_err(|e| setup_error(url, e))?;
    let channel = endpoint
        .connect()
        .await
        .map_err(|source| CliError::Unreachable {
            url: url.to_owned(),
            source,
        })?;
    Ok(InterceptedService::new(channel, bearer))
}

/// `err` with what it says about the TLS setup made explicit ([`CliError::Tls`]): an
/// untrusted certificate found in a failed connection's chain, or a call that failed on the
/// connection to an `http://` URL whose port turns out to speak TLS. Other errors are
/// returned as they are.
pub async fn diagnose(err: CliError, url: &str) -> CliError {
    let problem = match &err {
        CliError::Unreachable { source, .. } => setup_problem(source, url).await,
        CliError::Rpc { status, .. } => setup_problem(status, url).await,
        _ => None,
    };
    let Some(problem) = problem else {
        return err;
    };
    let source: Option<Box<dyn std::error::Error + Send + Sync>> = match err {
        _ if problem == TlsProblem::PlainTextToTls => None,
        CliError::Unreachable { source, .. } => Some(Box::new(source)),
        CliError::Rpc { status, .. } => Some(Box::new(StatusCause(status))),
        other => Some(Box::new(other)),
    };
    let auth = AUTH.get().cloned().unwrap_or_default();
    CliError::Tls {
        url: url.to_owned(),
        description: problem.describe(&auth),
        problem,
        source,
    }
}

/// A status as a cause: its message, then its own causes (a status's `Display` is a debug
/// dump).
#[derive(Debug)]
struct StatusCause(tonic::Status);

impl std::fmt::Display for StatusCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.message())
    }
}

impl std::error::Error for StatusCause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.0)
    }
}

/// The TLS problem in `err`, or [`TlsProblem::PlainTextToTls`] when the connection to an
/// `http://` URL failed and its port speaks TLS.
async fn setup_problem(err: &(dyn std::error::Error + 'static), url: &str) -> Option<TlsProblem> {
    if let Some(problem) = agent_client::tls_problem(err) {
        return Some(problem);
    }
    (agent_client::is_connection_failure(err) && agent_client::serves_tls(url).await)
        .then_some(TlsProblem::PlainTextToTls)
}

/// Connects to `url`, failing fast with a clear error when nothing listens there.
pub async fn connect(url: &str) -> Result<Client, CliError> {
    Ok(CampaignServiceClient::new(channel(url).await?)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// Connects to the coordinator's `ScheduleService`.
pub async fn connect_schedules(url: &str) -> Result<ScheduleClient, CliError> {
    Ok(ScheduleServiceClient::new(channel(url).await?)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// Connects the token service at `url`.
pub async fn connect_tokens(url: &str) -> Result<TokenClient, CliError> {
    Ok(TokenServiceClient::new(channel(url).await?).max_decoding_message_size(MAX_MESSAGE_BYTES))
}
