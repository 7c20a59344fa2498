//! A step's telemetry from start to end: the GPU and host [`Sampler`] and the server's
//! [`ServerScraper`] together, finished into the summary and the raw blob a step result
//! carries.

use std::sync::Arc;
use std::time::Instant;

use tracing::warn;

use super::aggregate::{Throughput, summarise};
use super::sampler::{Sampler, SamplerHandle};
use super::server::{ServerScraper, ServerScraperHandle};
use super::{GpuSource, TelemetrySummary};

/// The framework's metrics endpoint, when it has one.
#[derive(Debug, Clone, Copy)]
pub struct MetricsEndpoint<'a> {
    /// Server base URL.
    pub base_url: &'a str,
    /// Path of the Prometheus endpoint; empty when the framework declares none.
    pub path: &'a str,
}

/// What a finished recorder hands the step result.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedTelemetry {
    /// Goes into the `StepDocument` (`telemetry`).
    pub summary: TelemetrySummary,
    /// zstd JSON Lines of the raw samples (`StepResult.telemetry_zstd`); empty when they
    /// could not be encoded.
    pub raw_zstd: Vec<u8>,
}

/// Telemetry of one running step.
#[derive(Debug)]
pub struct StepRecorder {
    sampler: Option<SamplerHandle>,
    scraper: Option<ServerScraperHandle>,
}

impl StepRecorder {
    /// Starts sampling GPUs `indices` of `gpus` and the host at `rate_hz`, and scraping
    /// `endpoint` when given. Never fails: what cannot start is logged and left out.
    pub async fn start(
        gpus: Arc<dyn GpuSource>,
        indices: &[u32],
        rate_hz: f64,
        endpoint: Option<MetricsEndpoint<'_>>,
    ) -> StepRecorder {
        let sampler = match Sampler::start(gpus, indices, rate_hz) {
            Ok(sampler) => Some(sampler),
            Err(err) => {
                warn!(error = %err, "failed to start the telemetry sampler; the step has no GPU or host telemetry");
                None
            }
        };
        let started = sampler
            .as_ref()
            .map_or_else(Instant::now, SamplerHandle::started);
        let scraper = match endpoint {
            Some(e) => ServerScraper::start(e.base_url, e.path, started).await,
            None => None,
        };
        StepRecorder { sampler, scraper }
    }

    /// Stops sampling and scraping; the step's summary (derived figures from `throughput`)
    /// and raw samples. `None` when nothing was recorded.
    pub async fn finish(self, throughput: Throughput) -> Option<RecordedTelemetry> {
        let telemetry = match self.sampler {
            Some(sampler) => tokio::task::spawn_blocking(move || sampler.finish())
                .await
                .ok(),
            None => None,
        };
        let (scrapes, server) = match self.scraper {
            Some(scraper) => {
                let (scrapes, summary) = scraper.finish().await;
                (scrapes, Some(summary))
            }
            None => (Vec::new(), None),
        };
        let telemetry = telemetry?;
        let mut summary = summarise(&telemetry, throughput);
        summary.server = server;
        let factor = telemetry.downsample_factor(scrapes.len());
        summary.raw_downsample = factor as u32;
        let raw_zstd = match telemetry.to_jsonl_zstd(&scrapes, factor) {
            Ok(blob) => blob,
            Err(err) => {
                warn!(error = %err, "failed to encode the raw telemetry; only the summary is kept");
                Vec::new()
            }
        };
        Some(RecordedTelemetry { summary, raw_zstd })
    }
}
