//! The tower layer in front of every gRPC service: gives each call a request id and a
//! tracing span, asks the [`Authenticator`] whether the call may proceed, and logs, audits
//! and answers refusals. Handlers find the [`Caller`] in the request's extensions.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderValue, Request, Response};
use tonic::body::Body;
use tower::{Layer, Service};
use tracing::{Instrument, debug, info_span, warn};

use super::authenticator::peer_addr;
use super::policy;
use super::{Authenticator, Caller};
use crate::metrics::Metrics;
use crate::tls::PeerInfo;

/// Header carrying the request id, both ways.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// A call's request id, for handlers (a request extension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

/// The audit log's actor for a refused call that carried no valid token.
pub const UNAUTHENTICATED: &str = "unauthenticated";

/// Longest request id taken from a client; longer or odd ones are replaced.
const MAX_REQUEST_ID: usize = 64;

/// Wraps services with authentication, authorization and request ids.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
    metrics: Arc<Metrics>,
}

impl AuthLayer {
    /// A layer deciding with `auth` and counting calls in `metrics`.
    pub fn new(auth: Arc<Authenticator>, metrics: Arc<Metrics>) -> AuthLayer {
        AuthLayer { auth, metrics }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            auth: Arc::clone(&self.auth),
            metrics: Arc::clone(&self.metrics),
        }
    }
}

/// The service [`AuthLayer`] makes.
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Authenticator>,
    metrics: Arc<Metrics>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S> Service<Request<Body>> for AuthService<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Response<Body>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        // The clone that was polled ready serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = Arc::clone(&self.auth);
        let metrics = Arc::clone(&self.metrics);
        let request_id = request_id(request.headers().get(REQUEST_ID_HEADER));
        let path = request.uri().path().to_owned();
        let method = policy::method_name(&path).to_owned();
        let peer = request.extensions().get::<PeerInfo>().cloned();
        let span = info_span!(
            "rpc",
            rpc = %method,
            request_id = %request_id,
            caller = tracing::field::Empty,
        );
        Box::pin(
            async move {
                let started = Instant::now();
                let decision = auth
                    .authorize(
                        &path,
                        request.headers().get(http::header::AUTHORIZATION),
                        peer.as_ref(),
                    )
                    .await;
                let caller = match decision {
                    Ok(caller) => caller,
                    Err(refusal) => {
                        // A valid token names who was refused (a role it lacks, a rate
                        // limit, a missing client certificate); else nobody is known.
                        let actor = refusal.actor().unwrap_or(UNAUTHENTICATED).to_owned();
                        warn!(
                            path = %path,
                            peer = ?peer_addr(peer.as_ref()),
                            actor = %actor,
                            refusal = refusal.kind(),
                            code = ?refusal.code(),
                            "call refused"
                        );
                        metrics.refused(&method, refusal.kind());
                        let store = auth.store().clone();
                        let detail = serde_json::json!({
                            "request_id": request_id,
                            "reason": refusal.kind(),
                            "code": format!("{:?}", refusal.code()),
                            "peer": peer_addr(peer.as_ref()).map(|a| a.to_string()),
                        });
                        let target = format!("rpc{path}");
                        // The answer does not wait for the audit write.
                        tokio::spawn(async move {
                            if let Err(err) =
                                store.record_audit(&actor, "refused", &target, detail).await
                            {
                                warn!(error = %crate::grpc::status::chain(&err), "failed to audit a refused call");
                            }
                        });
                        let mut response = refusal.status(&method, &request_id).into_http::<Body>();
                        set_request_id(response.headers_mut(), &request_id);
                        return Ok(response);
                    }
                };
                tracing::Span::current().record("caller", caller.name.as_str());
                request.extensions_mut().insert(caller);
                request.extensions_mut().insert(RequestId(request_id.clone()));
                metrics.called(&method);
                let outcome = inner.call(request).await;
                let elapsed = started.elapsed();
                metrics.answered(&method, elapsed);
                match outcome {
                    Ok(mut response) => {
                        set_request_id(response.headers_mut(), &request_id);
                        undecodable_is_invalid_argument(response.headers_mut());
                        debug!(elapsed_ms = elapsed.as_secs_f64() * 1e3, "rpc answered");
                        Ok(response)
                    }
                    Err(err) => Err(err),
                }
            }
            .instrument(span),
        )
    }
}

/// The client's request id when it is short and plain, else a new one.
fn request_id(header: Option<&HeaderValue>) -> String {
    header
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= MAX_REQUEST_ID
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
        .map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), str::to_owned)
}

/// tonic answers a request it cannot decode with INTERNAL; it is the caller's error, so
/// the status becomes INVALID_ARGUMENT (for answers whose status is in the headers, which
/// is every request that fails before its handler runs).
fn undecodable_is_invalid_argument(headers: &mut http::HeaderMap) {
    const INTERNAL: &str = "13";
    const DECODE_PREFIX: &[u8] = b"failed%20to%20decode%20Protobuf%20message";
    let undecodable = headers
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == INTERNAL.as_bytes())
        && headers
            .get("grpc-message")
            .is_some_and(|v| v.as_bytes().starts_with(DECODE_PREFIX));
    if undecodable {
        headers.insert("grpc-status", HeaderValue::from_static("3"));
    }
}

fn set_request_id(headers: &mut http::HeaderMap, id: &str) {
    if let Ok(value) = HeaderValue::from_str(id) {
        headers.insert(REQUEST_ID_HEADER, value);
    }
}

/// The name of the token that authenticated a request; `None` while tokens are not
/// enforced (audit entries then keep the name the handler used before tokens existed).
pub fn token_name<T>(request: &tonic::Request<T>) -> Option<String> {
    request
        .extensions()
        .get::<Caller>()
        .filter(|c| c.token_id.is_some())
        .map(|c| c.name.clone())
}

/// The request id of a request, for handlers; empty when none was attached.
pub fn request_id_of<T>(request: &tonic::Request<T>) -> String {
    request
        .extensions()
        .get::<RequestId>()
        .map_or_else(String::new, |id| id.0.clone())
}

/// The caller of a request, for handlers; `anonymous` when none was attached.
pub fn caller_name<T>(request: &tonic::Request<T>) -> String {
    request
        .extensions()
        .get::<Caller>()
        .map_or_else(|| "anonymous".to_owned(), |c| c.name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undecodable_requests_become_invalid_argument() {
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-status", HeaderValue::from_static("13"));
        headers.insert(
            "grpc-message",
            HeaderValue::from_static("failed%20to%20decode%20Protobuf%20message%3A%20x"),
        );
        undecodable_is_invalid_argument(&mut headers);
        assert_eq!(headers["grpc-status"], "3");
        let mut other = http::HeaderMap::new();
        other.insert("grpc-status", HeaderValue::from_static("13"));
        other.insert("grpc-message", HeaderValue::from_static("disk%20full"));
        undecodable_is_invalid_argument(&mut other);
        assert_eq!(other["grpc-status"], "13");
    }

    #[test]
    fn request_ids_are_kept_when_plain_and_replaced_otherwise() {
        let plain = HeaderValue::from_static("abc-123_x.y");
        assert_eq!(request_id(Some(&plain)), "abc-123_x.y");
        let odd = HeaderValue::from_static("a b");
        assert_eq!(request_id(Some(&odd)).len(), 32);
        let long = HeaderValue::from_str(&"a".repeat(65)).unwrap();
        assert_eq!(request_id(Some(&long)).len(), 32);
        assert_ne!(request_id(None), request_id(None));
    }
}
