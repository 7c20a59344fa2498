//! `TokenService`: creating, listing and revoking API tokens, and reading the audit log
//! (`super::audit`); operator only, the authorization layer checks that before a call gets
//! here.

use std::sync::Arc;

use evalctl_proto::v1 as pb;
use evalctl_proto::v1::token_service_server::TokenService;
use tonic::{Request, Response, Status};
use tracing::info;

use super::status::{chain, store_error};
use crate::auth::layer::caller_name;
use crate::auth::{Authenticator, Role, token};
use crate::limits;
use crate::store::{Store, StoreError, TokenRow};

/// The token service over the store; tells the authenticator when tokens change.
#[derive(Debug, Clone)]
pub struct TokenApi {
    store: Store,
    auth: Arc<Authenticator>,
}

impl TokenApi {
    /// A service storing tokens in `store` and refreshing `auth` after each change.
    pub fn new(store: Store, auth: Arc<Authenticator>) -> TokenApi {
        TokenApi { store, auth }
    }
}

/// The wire role of a domain role.
pub fn role_to_wire(role: Role) -> pb::TokenRole {
    match role {
        Role::Operator => pb::TokenRole::Operator,
        Role::Viewer => pb::TokenRole::Viewer,
        Role::Agent => pb::TokenRole::Agent,
    }
}

/// The domain role of a wire role; `None` for unspecified or unknown values.
pub fn role_from_wire(role: i32) -> Option<Role> {
    match pb::TokenRole::try_from(role).ok()? {
        pb::TokenRole::Operator => Some(Role::Operator),
        pb::TokenRole::Viewer => Some(Role::Viewer),
        pb::TokenRole::Agent => Some(Role::Agent),
        pb::TokenRole::Unspecified => None,
    }
}

/// A token row on the wire.
pub fn token_info(row: &TokenRow) -> pb::TokenInfo {
    pb::TokenInfo {
        token_id: row.token_id.clone(),
        name: row.name.clone(),
        role: role_to_wire(row.role) as i32,
        created_ms: row.created_ms,
        created_by: row.created_by.clone(),
        revoked_ms: row.revoked_ms.unwrap_or(0),
        revoked_by: row.revoked_by.clone().unwrap_or_default(),
        last_used_ms: row.last_used_ms.unwrap_or(0),
    }
}

#[tonic::async_trait]
impl TokenService for TokenApi {
    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let actor = caller_name(&request);
        let req = request.into_inner();
        limits::token_name(&req.name)?;
        let role = role_from_wire(req.role).ok_or_else(|| {
            Status::invalid_argument(
                "field `role` must be operator, viewer or agent (hint: evalctl token create --role viewer NAME)",
            )
        })?;
        let secret = token::generate();
        let row = self
            .store
            .create_token(&secret.token_id, &req.name, role, secret.hash, &actor)
            .await
            .map_err(|err| match err {
                StoreError::TokenNameTaken { .. } => Status::already_exists(chain(&err)),
                other => store_error(other),
            })?;
        self.auth.invalidate().await;
        info!(token = %row.token_id, name = %row.name, role = %row.role, by = %actor, "token created");
        Ok(Response::new(pb::CreateTokenResponse {
            token: Some(token_info(&row)),
            secret: secret.secret,
        }))
    }

    async fn list_tokens(
        &self,
        _request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let tokens = self.store.list_tokens().await.map_err(store_error)?;
        Ok(Response::new(pb::ListTokensResponse {
            tokens: tokens.iter().map(token_info).collect(),
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let actor = caller_name(&request);
        let req = request.into_inner();
        if req.token.is_empty() {
            return Err(Status::invalid_argument("field `token` is empty"));
        }
        limits::short_field("token", &req.token)?;
        let row = self
            .store
            .revoke_token(&req.token, &actor)
            .await
            .map_err(store_error)?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no token with id or live name `{}` (hint: evalctl token list)",
                    req.token
                ))
            })?;
        self.auth.invalidate().await;
        info!(token = %row.token_id, name = %row.name, by = %actor, "token revoked");
        Ok(Response::new(pb::RevokeTokenResponse {
            token: Some(token_info(&row)),
        }))
    }

    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        super::audit::list(&self.store, request.into_inner())
            .await
            .map(Response::new)
    }
}
