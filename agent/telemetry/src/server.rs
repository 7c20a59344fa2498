//! Scraping an inference server's own Prometheus endpoint during a step: once before it, at
//! 1 Hz during it and once after it, keeping the series evalctl knows of every engine
//! ([`kept_series`]), whichever the server exposes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use evalctl_results::{SeriesKind, ServerMetricsSummary};

use super::prometheus::{self, kept_series};

/// Time between scrapes during a step.
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(1);
/// Longest wait for one scrape.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest exposition read.
const MAX_SCRAPE_BYTES: usize = 8 << 20;

/// One scrape, as stored in the raw telemetry blob.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerScrape {
    /// Milliseconds since the step's telemetry started.
    pub t_ms: u64,
    /// "before", "during" or "after" the step.
    pub phase: String,
    /// The kept series' values, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub values: BTreeMap<String, f64>,
    /// Why the scrape failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Starts scrapers; see the module docs.
#[derive(Debug)]
pub struct ServerScraper;

/// A running scraper; [`ServerScraperHandle::finish`] ends it (dropping it does too).
#[derive(Debug)]
pub struct ServerScraperHandle {
    target: Target,
    stop: DropGuard,
    task: JoinHandle<Vec<ServerScrape>>,
}

#[derive(Debug, Clone)]
struct Target {
    url: String,
    kept: &'static [(&'static str, SeriesKind)],
    client: Client<HttpConnector, Empty<bytes::Bytes>>,
    started: Instant,
}

impl ServerScraper {
    /// Scrapes `base_url` + `metrics_path` now ("before"), then every second. `None` when
    /// the framework declares no endpoint (`metrics_path` empty). `started` is the step
    /// telemetry's time origin.
    pub async fn start(
        base_url: &str,
        metrics_path: &str,
        started: Instant,
    ) -> Option<ServerScraperHandle> {
        let kept = kept_series();
        if metrics_path.is_empty() {
            return None;
        }
        let path = if metrics_path.starts_with('/') {
            metrics_path.to_owned()
        } else {
            format!("/{metrics_path}")
        };
        let target = Target {
            url: format!("{}{path}", base_url.trim_end_matches('/')),
            kept,
            client: Client::builder(TokioExecutor::new()).build_http(),
            started,
        };
        let before = target.scrape("before").await;
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let target = target.clone();
            let stop = stop.clone();
            async move {
                let mut scrapes = vec![before];
                let mut tick = tokio::time::interval(SCRAPE_INTERVAL);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                tick.tick().await; // the first tick is immediate: "before" was it
                loop {
                    tokio::select! {
                        _ = tick.tick() => scrapes.push(target.scrape("during").await),
                        _ = stop.cancelled() => break,
                    }
                }
                scrapes
            }
        });
        Some(ServerScraperHandle {
            target,
            stop: stop.drop_guard(),
            task,
        })
    }
}

impl ServerScraperHandle {
    /// Stops scraping, scrapes once more ("after"), and summarises.
    pub async fn finish(self) -> (Vec<ServerScrape>, ServerMetricsSummary) {
        drop(self.stop);
        let mut scrapes = self.task.await.unwrap_or_default();
        scrapes.push(self.target.scrape("after").await);
        let answered: Vec<&BTreeMap<String, f64>> = scrapes
            .iter()
            .filter(|s| s.error.is_none())
            .map(|s| &s.values)
            .collect();
        let summary = ServerMetricsSummary {
            url: self.target.url.clone(),
            scrapes: answered.len() as u32,
            failed_scrapes: (scrapes.len() - answered.len()) as u32,
            series: prometheus::summarise_series(&answered, self.target.kept),
        };
        (scrapes, summary)
    }
}

impl Target {
    async fn scrape(&self, phase: &str) -> ServerScrape {
        let t_ms = self.started.elapsed().as_millis() as u64;
        let (values, error) = match tokio::time::timeout(SCRAPE_TIMEOUT, self.fetch()).await {
            Ok(Ok(values)) => (values, None),
            Ok(Err(e)) => (BTreeMap::new(), Some(e)),
            Err(_) => (BTreeMap::new(), Some("timed out".to_owned())),
        };
        ServerScrape {
            t_ms,
            phase: phase.to_owned(),
            values,
            error,
        }
    }

    async fn fetch(&self) -> Result<BTreeMap<String, f64>, String> {
        let uri: hyper::Uri = self.url.parse().map_err(|e| format!("bad URL: {e}"))?;
        let response = self.client.get(uri).await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()));
        }
        let body = http_body_util::Limited::new(response.into_body(), MAX_SCRAPE_BYTES)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let text = std::str::from_utf8(&body).map_err(|_| "not UTF-8 text".to_owned())?;
        let exposition = prometheus::parse(text).map_err(|e| e.to_string())?;
        Ok(prometheus::select(&exposition, self.kept))
    }
}
