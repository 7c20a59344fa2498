//! Preemption watchers: how a spot host learns it is about to be taken away.
//!
//! Lead times are short (GCP and Azure Spot: 30 s; AWS: 2 minutes), so the agent acts on a
//! notice at once: it stops the running step, delivers its finished results, releases every
//! lease as `preempted` (the coordinator re-queues the unit at once, without counting it
//! against `max_attempts`) and only then stops its servers. Watchers:
//!
//! | provider | endpoint | notice |
//! |---|---|---|
//! | [`aws`] | `PUT /latest/api/token` (IMDSv2), then `GET /latest/meta-data/spot/instance-action` every poll interval | 200 with `{"action": …, "time": …}` (404 means none) |
//! | [`gcp`] | `GET /computeMetadata/v1/instance/preempted` with `Metadata-Flavor: Google`, then long polls with `wait_for_change=true&last_etag=…` | body `TRUE` |
//! | [`azure`] | `GET /metadata/scheduledevents?api-version=2020-07-01` with `Metadata: true` every poll interval | an event with `EventType` `Preempt` |
//!
//! SIGTERM and SIGINT are handled by the agent itself: on a host with a provider configured
//! they count as a preemption notice too (a spot VM being reclaimed stops its services).

pub mod aws;
pub mod azure;
pub mod gcp;
mod http;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// A cloud whose preemption notices the agent watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// AWS EC2 Spot: instance metadata service v2.
    Aws,
    /// Google Compute Engine Spot / preemptible VMs: the metadata server.
    Gcp,
    /// Azure Spot VMs: Scheduled Events.
    Azure,
}

impl Provider {
    /// The metadata service's usual address.
    pub fn default_base_url(self) -> &'static str {
        match self {
            Provider::Aws | Provider::Azure => "http://169.254.169.254",
            Provider::Gcp => "http://metadata.google.internal",
        }
    }

    /// How often the watcher polls (GCP long-polls and uses this only to retry errors).
    pub fn default_poll(self) -> Duration {
        match self {
            // AWS's own guidance is to check every 5 s within the 2-minute warning.
            Provider::Aws => Duration::from_secs(5),
            // Azure Spot gives 30 s: poll often.
            Provider::Azure => Duration::from_secs(2),
            Provider::Gcp => Duration::from_secs(5),
        }
    }
}

impl FromStr for Provider {
    type Err = String;

    fn from_str(s: &str) -> Result<Provider, String> {
        match s.to_ascii_lowercase().as_str() {
            "aws" => Ok(Provider::Aws),
            "gcp" | "gce" => Ok(Provider::Gcp),
            "azure" => Ok(Provider::Azure),
            other => Err(format!(
                "unknown spot provider `{other}` (expected aws, gcp or azure)"
            )),
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Provider::Aws => "aws",
            Provider::Gcp => "gcp",
            Provider::Azure => "azure",
        })
    }
}

/// What to watch and where.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchConfig {
    /// The cloud.
    pub provider: Provider,
    /// Metadata service base URL, e.g. `http://169.254.169.254`.
    pub base_url: String,
    /// Poll interval.
    pub poll: Duration,
}

impl WatchConfig {
    /// The provider's defaults.
    pub fn new(provider: Provider) -> WatchConfig {
        WatchConfig {
            provider,
            base_url: provider.default_base_url().to_owned(),
            poll: provider.default_poll(),
        }
    }
}

/// A preemption notice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// Who gave it.
    pub provider: Provider,
    /// What the provider said (action and time), for the logs and the unit's history.
    pub detail: String,
}

/// Watches until a notice arrives (returned) or `stop` fires (`None`). Errors reaching the
/// metadata service are logged once per kind of failure and retried every poll interval:
/// a watcher that gives up would miss the one notice that matters.
pub async fn watch(config: &WatchConfig, stop: &CancellationToken) -> Option<Notice> {
    info!(provider = %config.provider, url = %config.base_url, poll = ?config.poll, "watching for preemption notices");
    let mut last_error = String::new();
    let mut aws_token = None;
    let mut gcp_etag = None;
    loop {
        let checked = match config.provider {
            Provider::Aws => aws::check(&config.base_url, &mut aws_token).await,
            Provider::Gcp => gcp::wait(&config.base_url, &mut gcp_etag, stop).await,
            Provider::Azure => azure::check(&config.base_url).await,
        };
        match checked {
            Ok(Some(detail)) => {
                let notice = Notice {
                    provider: config.provider,
                    detail,
                };
                warn!(provider = %notice.provider, detail = %notice.detail, "preemption notice");
                return Some(notice);
            }
            Ok(None) => last_error.clear(),
            Err(error) => {
                if error != last_error {
                    warn!(provider = %config.provider, %error, "cannot read preemption notices; retrying");
                    last_error = error;
                }
            }
        }
        // GCP's long poll returns on a change or its own timeout; the others poll.
        let pause =
            if config.provider == Provider::Gcp && last_error.is_empty() && gcp_etag.is_some() {
                Duration::ZERO
            } else {
                config.poll
            };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.cancelled() => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_parse_and_print() {
        for p in [Provider::Aws, Provider::Gcp, Provider::Azure] {
            assert_eq!(p.to_string().parse::<Provider>(), Ok(p));
        }
        assert_eq!("GCE".parse::<Provider>(), Ok(Provider::Gcp));
        let err = "ibm".parse::<Provider>().unwrap_err();
        assert!(err.contains("expected aws, gcp or azure"), "{err}");
    }
}
