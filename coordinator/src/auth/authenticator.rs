//! Who is calling, and whether they may: the decision for one call, from its
//! `authorization` header, its connection and the RPC's [`Access`].
//!
//! Live tokens are cached from the store and re-read at most every [`CACHE_TTL`], and at
//! once after a create or revoke through the `TokenService`: a token created or revoked
//! with `evalctl-coordinator token` on the database file of a running coordinator takes
//! effect within that time. While no token exists the table is re-read every
//! [`OPEN_CACHE_TTL`], so the first token turns enforcement on almost at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tonic::{Code, Status};
use tracing::warn;

use super::Role;
use super::identity::{AgentCertMap, AgentIdentity};
use super::policy::{self, Access};
use super::rate::{Rate, RateLimiter};
use super::token::{self, Presented};
use super::usage::UseThrottle;
use crate::grpc::status::chain;
use crate::store::{Store, TokenRow};
use crate::tls::PeerInfo;

/// Longest a token created or revoked outside this process goes unnoticed.
pub const CACHE_TTL: Duration = Duration::from_secs(2);

/// Longest the first token goes unnoticed while none existed (the open mode).
pub const OPEN_CACHE_TTL: Duration = Duration::from_millis(250);

/// The caller of an RPC, as handlers see it (a request extension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name, or `anonymous` when tokens are not enforced.
    pub name: String,
    /// The token's id; `None` when tokens are not enforced.
    pub token_id: Option<String>,
    /// What the caller may do.
    pub role: Role,
    /// For agent calls under mutual TLS: the agent ids the client certificate may act as
    /// (the handlers check the ids the call names). `None` without mutual TLS.
    pub agent_identity: Option<AgentIdentity>,
}

impl Caller {
    /// The caller when tokens are not enforced: may do everything.
    pub fn anonymous() -> Caller {
        Caller {
            name: "anonymous".to_owned(),
            token_id: None,
            role: Role::Operator,
            agent_identity: None,
        }
    }
}

/// How the coordinator authenticates callers.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthSettings {
    /// With no token ever created, let every caller in (loopback, or `--insecure`).
    pub open_without_tokens: bool,
    /// `AgentService` calls need a client certificate verified by the client CA.
    pub agent_client_cert: bool,
    /// Submissions per caller (not applied while tokens are not enforced).
    pub submit_rate: Rate,
    /// With `agent_client_cert`: certificate names and the agent ids each may act as,
    /// beside the name itself.
    pub agent_cert_map: Arc<AgentCertMap>,
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No `authorization` header.
    MissingToken,
    /// A header that is not `Bearer evt_…`.
    MalformedToken,
    /// A well-formed secret that matches no live token (unknown or revoked).
    UnknownToken,
    /// The token's role does not allow the call.
    Forbidden {
        /// The token's name.
        name: String,
        /// Its role.
        role: Role,
        /// What the call needs.
        needs: &'static str,
    },
    /// An agent call without a verified client certificate (mutual TLS).
    ClientCertRequired {
        /// The name of the valid token the call carried, if it carried one.
        name: Option<String>,
    },
    /// Too many submissions; the next one is allowed after this long.
    RateLimited {
        /// The token's name.
        name: String,
        /// How long until the next submission is allowed.
        wait: Duration,
    },
    /// The token table could not be read.
    Unavailable(String),
}

impl Refusal {
    /// The gRPC status code.
    pub fn code(&self) -> Code {
        match self {
            Refusal::MissingToken
            | Refusal::MalformedToken
            | Refusal::UnknownToken
            | Refusal::ClientCertRequired { .. } => Code::Unauthenticated,
            Refusal::Forbidden { .. } => Code::PermissionDenied,
            Refusal::RateLimited { .. } => Code::ResourceExhausted,
            Refusal::Unavailable(_) => Code::Unavailable,
        }
    }

    /// A short word for logs, audit entries and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::MissingToken => "missing_token",
            Refusal::MalformedToken => "malformed_token",
            Refusal::UnknownToken => "unknown_token",
            Refusal::Forbidden { .. } => "forbidden",
            Refusal::ClientCertRequired { .. } => "client_cert_required",
            Refusal::RateLimited { .. } => "rate_limited",
            Refusal::Unavailable(_) => "unavailable",
        }
    }

    /// The name of the valid token the refused call carried: who the audit log names.
    /// `None` when the call carried no valid token (or it was not checked).
    pub fn actor(&self) -> Option<&str> {
        match self {
            Refusal::Forbidden { name, .. } | Refusal::RateLimited { name, .. } => Some(name),
            Refusal::ClientCertRequired { name } => name.as_deref(),
            Refusal::MissingToken
            | Refusal::MalformedToken
            | Refusal::UnknownToken
            | Refusal::Unavailable(_) => None,
        }
    }

    /// The status a client sees, naming the request id.
    pub fn status(&self, method: &str, request_id: &str) -> Status {
        let message = match self {
            Refusal::MissingToken => "missing bearer token (hint: pass --token, set \
                 EVALCTL_TOKEN or EVALCTL_TOKEN_FILE; an operator creates tokens with \
                 `evalctl token create`)"
                .to_owned(),
            Refusal::MalformedToken => "malformed authorization header (hint: expected \
                 `Bearer evt_…`, a token printed by `evalctl token create`)"
                .to_owned(),
            Refusal::UnknownToken => {
                "invalid or revoked token (hint: `evalctl token list` shows live tokens)".to_owned()
            }
            Refusal::Forbidden { name, role, needs } => {
                format!("token `{name}` has role {role}; {method} needs {needs}")
            }
            Refusal::ClientCertRequired { .. } => "agent calls need a client certificate signed \
                 by the coordinator's client CA (hint: pass --client-cert and --client-key \
                 to the agent)"
                .to_owned(),
            Refusal::RateLimited { wait, .. } => format!(
                "too many submissions; try again in {:.1}s",
                wait.as_secs_f64()
            ),
            Refusal::Unavailable(why) => format!("failed to check the token: {why}"),
        };
        Status::new(self.code(), format!("{message} (request id {request_id})"))
    }
}

/// Live tokens by the SHA-256 of their secret.
#[derive(Debug, Default)]
struct Cached {
    any_created: bool,
    by_hash: HashMap<[u8; 32], TokenRow>,
}

/// Decides calls: one per server, shared by the layer and the `TokenService`.
#[derive(Debug)]
pub struct Authenticator {
    store: Store,
    settings: AuthSettings,
    submits: RateLimiter,
    uses: UseThrottle,
    cache: Mutex<Option<(Instant, Arc<Cached>)>>,
}

impl Authenticator {
    /// An authenticator over the store's tokens.
    pub fn new(store: Store, settings: AuthSettings) -> Authenticator {
        Authenticator {
            submits: RateLimiter::new(settings.submit_rate),
            uses: UseThrottle::default(),
            store,
            settings,
            cache: Mutex::new(None),
        }
    }

    /// The store, for auditing refusals.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Forgets the cached tokens: the next call re-reads them.
    pub async fn invalidate(&self) {
        *self.cache.lock().await = None;
    }

    /// Whether tokens are enforced now.
    pub async fn enforced(&self) -> Result<bool, Refusal> {
        Ok(!self.settings.open_without_tokens || self.tokens().await?.any_created)
    }

    async fn tokens(&self) -> Result<Arc<Cached>, Refusal> {
        let mut cache = self.cache.lock().await;
        // While no token exists the table is re-read more often, so the first token
        // created (e.g. with `evalctl-coordinator token create`) is enforced at once.
        if let Some((at, cached)) = cache.as_ref()
            && at.elapsed()
                < if cached.any_created {
                    CACHE_TTL
                } else {
                    OPEN_CACHE_TTL
                }
        {
            return Ok(Arc::clone(cached));
        }
        match self.store.token_table().await {
            Ok(table) => {
                let cached = Arc::new(Cached {
                    any_created: table.any_created,
                    by_hash: table
                        .live
                        .into_iter()
                        .map(|t| (t.secret_sha256, t.row))
                        .collect(),
                });
                *cache = Some((Instant::now(), Arc::clone(&cached)));
                Ok(cached)
            }
            Err(err) => {
                let why = chain(&err);
                match cache.as_ref() {
                    // Fail closed only when nothing was ever read: an old table is better
                    // than refusing every agent while the disk hiccups.
                    Some((_, cached)) => {
                        warn!(error = %why, "failed to re-read tokens; using the cached ones");
                        Ok(Arc::clone(cached))
                    }
                    None => Err(Refusal::Unavailable(why)),
                }
            }
        }
    }

    /// Decides one call to `path` with this `authorization` header over this connection.
    pub async fn authorize(
        &self,
        path: &str,
        authorization: Option<&http::HeaderValue>,
        peer: Option<&PeerInfo>,
    ) -> Result<Caller, Refusal> {
        let access = policy::access(path);
        if access == Access::Public {
            return Ok(Caller::anonymous());
        }
        let mutual = access == Access::Agent && self.settings.agent_client_cert;
        let certificate = peer.filter(|p| p.client_cert);
        if mutual && certificate.is_none() {
            // Refused whatever the token; a valid one still names who was refused.
            let name = self.token_of(authorization).await.map(|row| row.name);
            return Err(Refusal::ClientCertRequired { name });
        }
        let tokens = self.tokens().await?;
        let mut caller = if self.settings.open_without_tokens && !tokens.any_created {
            Caller::anonymous()
        } else {
            let row = match_token(&tokens, authorization)?;
            self.note_use(&row.token_id);
            if !access.allows(row.role) {
                return Err(Refusal::Forbidden {
                    name: row.name.clone(),
                    role: row.role,
                    needs: access.describe(),
                });
            }
            if policy::method_name(path) == "Submit" && path.contains("CampaignService") {
                self.submits
                    .check(&row.token_id, Instant::now())
                    .map_err(|wait| Refusal::RateLimited {
                        name: row.name.clone(),
                        wait,
                    })?;
            }
            Caller {
                name: row.name.clone(),
                token_id: Some(row.token_id.clone()),
                role: row.role,
                agent_identity: None,
            }
        };
        if mutual && let Some(peer) = certificate {
            caller.agent_identity = Some(AgentIdentity::new(
                Arc::clone(&peer.client_cert_names),
                Arc::clone(&self.settings.agent_cert_map),
            ));
        }
        Ok(caller)
    }

    /// The live token an `authorization` header names, if it names one (for attributing a
    /// refusal decided before the token mattered).
    async fn token_of(&self, authorization: Option<&http::HeaderValue>) -> Option<TokenRow> {
        let tokens = self.tokens().await.ok()?;
        let row = match_token(&tokens, authorization).ok()?;
        self.note_use(&row.token_id);
        Some(row.clone())
    }

    /// Writes the token's `last_used_ms`, at most once per
    /// [`RECORD_EVERY`](super::usage::RECORD_EVERY); the
    /// call does not wait for the write.
    fn note_use(&self, token_id: &str) {
        if !self.uses.due(token_id, Instant::now()) {
            return;
        }
        let store = self.store.clone();
        let token_id = token_id.to_owned();
        tokio::spawn(async move {
            if let Err(err) = store.record_token_use(&token_id).await {
                warn!(token = %token_id, error = %chain(&err), "failed to record a token's use");
            }
        });
    }
}

/// The live token of an `authorization` header, or why there is none.
fn match_token<'a>(
    tokens: &'a Cached,
    authorization: Option<&http::HeaderValue>,
) -> Result<&'a TokenRow, Refusal> {
    let secret = match token::presented(authorization) {
        Presented::Missing => return Err(Refusal::MissingToken),
        Presented::Malformed => return Err(Refusal::MalformedToken),
        Presented::Bearer(secret) => secret,
    };
    tokens
        .by_hash
        .get(&token::hash(secret))
        .ok_or(Refusal::UnknownToken)
}

/// The remote address of a peer, for logs.
pub fn peer_addr(peer: Option<&PeerInfo>) -> Option<SocketAddr> {
    peer.and_then(|p| p.remote_addr)
}
