//! The coordinator's Prometheus metrics and their HTTP endpoint (`--metrics-addr`,
//! `GET /metrics`, text exposition format). docs/operations.md lists every series.
//!
//! Counters and histograms are updated as calls happen; gauges of campaigns, units and
//! agents by state are read from the store when Prometheus scrapes, so they are never stale
//! and cost nothing between scrapes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::grpc::status::chain;
use crate::store::{AgentState, CampaignState, Store};

/// Labels naming an RPC method.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

/// Labels of a refused call.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    method: String,
    reason: String,
}

/// Labels naming why a connection was refused or ended.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

/// Labels naming a state.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

type HistogramFamily = Family<MethodLabels, Histogram, fn() -> Histogram>;

fn rpc_histogram() -> Histogram {
    // 0.5 ms .. ~33 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 17))
}

/// Lease grant latency: the store's matching and granting of one lease, in seconds. One
/// histogram per process (the agent service reports into it).
pub fn lease_grant_seconds() -> &'static Histogram {
    static GRANTS: OnceLock<Histogram> = OnceLock::new();
    // 50 µs .. ~3.3 s.
    GRANTS.get_or_init(|| Histogram::new(exponential_buckets(0.00005, 2.0, 17)))
}

/// Records one lease grant that took `took`.
pub fn observe_lease_grant(took: Duration) {
    lease_grant_seconds().observe(took.as_secs_f64());
}

/// The coordinator's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    rpc_requests: Family<MethodLabels, Counter>,
    rpc_refused: Family<RefusedLabels, Counter>,
    rpc_duration: HistogramFamily,
    campaigns: Family<StateLabels, Gauge>,
    units: Family<StateLabels, Gauge>,
    agents: Family<StateLabels, Gauge>,
    connections_open: Gauge,
    connections_refused: Family<ReasonLabels, Counter>,
    connections_closed_idle: Counter,
    tls_handshake_failures: Family<ReasonLabels, Counter>,
    store_writable: Gauge,
    store_write_failures: Counter,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every series.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("evalctl");
        let rpc_requests = Family::<MethodLabels, Counter>::default();
        let rpc_refused = Family::<RefusedLabels, Counter>::default();
        let rpc_duration: HistogramFamily = Family::new_with_constructor(rpc_histogram);
        let campaigns = Family::<StateLabels, Gauge>::default();
        let units = Family::<StateLabels, Gauge>::default();
        let agents = Family::<StateLabels, Gauge>::default();
        registry.register(
            "rpc_requests",
            "gRPC calls let through by the authorization layer, by method",
            rpc_requests.clone(),
        );
        registry.register(
            "rpc_refused",
            "gRPC calls refused (authentication, role, rate limit), by method and reason",
            rpc_refused.clone(),
        );
        registry.register(
            "rpc_duration_seconds",
            "Time from a call's arrival to its response headers, by method (streams: to the first message)",
            rpc_duration.clone(),
        );
        registry.register(
            "lease_grant_seconds",
            "Time the store took to match and grant one lease",
            lease_grant_seconds().clone(),
        );
        registry.register("campaigns", "Campaigns by state", campaigns.clone());
        registry.register("units", "Units of all campaigns by state", units.clone());
        registry.register("agents", "Registered agents by state", agents.clone());
        let connections_open = Gauge::default();
        let connections_refused = Family::<ReasonLabels, Counter>::default();
        let connections_closed_idle = Counter::default();
        let tls_handshake_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "connections_open",
            "gRPC connections open (TLS handshake done or plain text)",
            connections_open.clone(),
        );
        registry.register(
            "connections_refused",
            "gRPC connections closed on accept, by the cap they would pass",
            connections_refused.clone(),
        );
        registry.register(
            "connections_closed_idle",
            "gRPC connections closed for having no call for the idle (or first-call) timeout",
            connections_closed_idle.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out, by reason",
            tls_handshake_failures.clone(),
        );
        let store_writable = Gauge::default();
        let store_write_failures = Counter::default();
        registry.register(
            "store_writable",
            "1 while the store's last write succeeded; 0 while writes fail (a full disk, an I/O error)",
            store_writable.clone(),
        );
        registry.register(
            "store_write_failures",
            "Store writes that failed for want of storage",
            store_write_failures.clone(),
        );
        Metrics {
            registry,
            rpc_requests,
            rpc_refused,
            rpc_duration,
            campaigns,
            units,
            agents,
            connections_open,
            connections_refused,
            connections_closed_idle,
            tls_handshake_failures,
            store_writable,
            store_write_failures,
        }
    }

    /// A connection opened (`1`) or closed (`-1`).
    pub fn connection_opened(&self, change: i64) {
        self.connections_open.inc_by(change);
    }

    /// Counts a connection refused on accept for `reason`.
    pub fn connection_refused(&self, reason: &str) {
        self.connections_refused
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts a connection closed for being idle.
    pub fn connection_closed_idle(&self) {
        self.connections_closed_idle.inc();
    }

    /// Counts a failed TLS handshake (`timeout`, `error`).
    pub fn tls_handshake_failed(&self, reason: &str) {
        self.tls_handshake_failures
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts a call let through.
    pub fn called(&self, method: &str) {
        self.rpc_requests
            .get_or_create(&MethodLabels {
                method: method.to_owned(),
            })
            .inc();
    }

    /// Records how long a call took to answer.
    pub fn answered(&self, method: &str, took: Duration) {
        self.rpc_duration
            .get_or_create(&MethodLabels {
                method: method.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// Counts a refused call.
    pub fn refused(&self, method: &str, reason: &str) {
        self.rpc_refused
            .get_or_create(&RefusedLabels {
                method: method.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Reads the gauges from the store and renders every series as Prometheus text.
    pub async fn render(&self, store: &Store) -> Result<String, crate::store::StoreError> {
        let campaigns = store.list_campaigns().await?;
        let agents = store.list_agents().await?;
        let mut units = [0u64; 5];
        let mut campaign_states = std::collections::BTreeMap::<&'static str, i64>::new();
        for campaign in &campaigns {
            let c = &campaign.units;
            for (slot, n) in
                units
                    .iter_mut()
                    .zip([c.pending, c.leased, c.succeeded, c.failed, c.cancelled])
            {
                *slot += n;
            }
            *campaign_states.entry(campaign.state.as_str()).or_default() += 1;
        }
        for (state, n) in ["pending", "leased", "succeeded", "failed", "cancelled"]
            .into_iter()
            .zip(units)
        {
            set(&self.units, state, i64::try_from(n).unwrap_or(i64::MAX));
        }
        for state in CampaignState::ALL {
            let state = state.as_str();
            set(
                &self.campaigns,
                state,
                campaign_states.get(state).copied().unwrap_or(0),
            );
        }
        let mut agent_states = std::collections::BTreeMap::<&'static str, i64>::new();
        for agent in &agents {
            *agent_states.entry(agent.state.as_str()).or_default() += 1;
        }
        for state in AgentState::ALL {
            let state = state.as_str();
            set(
                &self.agents,
                state,
                agent_states.get(state).copied().unwrap_or(0),
            );
        }
        let health = store.health();
        self.store_writable.set(i64::from(health.writable));
        let counted = self.store_write_failures.get();
        self.store_write_failures
            .inc_by(health.write_failures.saturating_sub(counted));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        Ok(text)
    }
}

fn set(family: &Family<StateLabels, Gauge>, state: &str, value: i64) {
    family
        .get_or_create(&StateLabels {
            state: state.to_owned(),
        })
        .set(value);
}

/// Serves `GET /metrics` on `listener` until `stop` is cancelled (HTTP/1.1, one task per
/// connection).
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    store: Store,
    stop: CancellationToken,
) {
    loop {
        let (tcp, _) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    warn!(error = %err, "metrics endpoint failed to accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (metrics, store, stop) = (Arc::clone(&metrics), store.clone(), stop.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let (metrics, store) = (Arc::clone(&metrics), store.clone());
                async move { Ok::<_, Infallible>(answer(request, &metrics, &store).await) }
            });
            let connection = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), service);
            tokio::select! {
                _ = stop.cancelled() => {}
                served = connection => if let Err(err) = served {
                    debug!(error = %err, "metrics connection ended with an error");
                },
            }
        });
    }
}

async fn answer<B>(request: Request<B>, metrics: &Metrics, store: &Store) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, text: String| {
        let mut response = Response::new(Full::new(Bytes::from(text)));
        *response.status_mut() = status;
        response
    };
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => match metrics.render(store).await {
            Ok(text) => {
                let mut response = reply(StatusCode::OK, text);
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                response
            }
            Err(err) => {
                warn!(error = %chain(&err), "failed to read metrics from the store");
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("store: {}\n", chain(&err)),
                )
            }
        },
        (_, "/metrics") => reply(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".to_owned()),
        _ => reply(StatusCode::NOT_FOUND, "try /metrics\n".to_owned()),
    }
}

/// The address the metrics endpoint is bound to, for logs.
pub fn describe(addr: Option<SocketAddr>) -> String {
    addr.map_or_else(|| "off".to_owned(), |a| format!("http://{a}/metrics"))
}
