//! `CampaignService`: what the `evalctl` CLI calls.

use std::pin::Pin;
use std::time::Duration;

use evalctl_proto::v1 as pb;
use evalctl_proto::v1::campaign_service_server::CampaignService;
use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use super::convert;
use super::status::{matrix_error, store_error};
use crate::auth::layer::token_name;
use crate::domain::{AgentId, CampaignId};
use crate::events::{CampaignEvent, EventBus};
use crate::limits;
use crate::matrix;
use crate::store::{CampaignInfo, CampaignState, ResultPages, Store, UnitState};
use crate::work::WorkSignal;

/// How often `Watch` re-reads counts when no event arrives (agents report through
/// other RPCs; this bounds how stale a watcher can be).
const WATCH_REFRESH: Duration = Duration::from_secs(2);

/// Step results sent ahead of a slow `Results` client.
const RESULTS_BUFFER: usize = 64;

/// The campaign service over a store, an event bus and the work signal.
#[derive(Clone)]
pub struct CampaignApi {
    store: Store,
    events: EventBus,
    work: WorkSignal,
    shutdown: CancellationToken,
}

impl CampaignApi {
    /// A service answering from `store`, publishing to `events` and firing `work` when
    /// units become runnable (submit, retry); open `Watch` and `Results` streams end when
    /// `shutdown` is cancelled.
    pub fn new(
        store: Store,
        events: EventBus,
        work: WorkSignal,
        shutdown: CancellationToken,
    ) -> CampaignApi {
        CampaignApi {
            store,
            events,
            work,
            shutdown,
        }
    }

    /// Finds a campaign by name or id, or answers NOT_FOUND naming what was asked.
    async fn find(&self, name_or_id: &str) -> Result<CampaignInfo, Status> {
        if name_or_id.is_empty() {
            return Err(Status::invalid_argument("field `campaign` is empty"));
        }
        limits::short_field("campaign", name_or_id)?;
        self.store
            .campaign(name_or_id)
            .await
            .map_err(store_error)?
            .ok_or_else(|| {
                Status::not_found(format!("no campaign named or with id `{name_or_id}`"))
            })
    }

    fn publish(&self, campaign: &CampaignId, kind: &str, detail: String) {
        self.events.publish(CampaignEvent {
            campaign_id: campaign.to_string(),
            kind: kind.to_owned(),
            unit_id: None,
            unit_label: None,
            detail,
        });
    }
}

fn is_terminal(state: CampaignState) -> bool {
    !matches!(state, CampaignState::Active)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;
type ResultStream = Pin<Box<dyn Stream<Item = Result<pb::StepResult, Status>> + Send>>;

#[tonic::async_trait]
impl CampaignService for CampaignApi {
    async fn submit(
        &self,
        request: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitResponse>, Status> {
        let token = token_name(&request);
        let req = request.into_inner();
        limits::matrix(&req.matrix_yaml)?;
        limits::text_field("source_name", &req.source_name)?;
        limits::short_field("submitted_by", &req.submitted_by)?;
        let source = if req.source_name.is_empty() {
            "<submitted matrix>"
        } else {
            req.source_name.as_str()
        };
        let expansion = matrix::expand_str(source, &req.matrix_yaml).map_err(matrix_error)?;
        expansion
            .check_not_empty(req.allow_empty)
            .map_err(|err| Status::invalid_argument(err.to_string()))?;
        let dropped = expansion.dropped.iter().map(convert::dropped).collect();
        let units = expansion.units.len() as u64;
        let steps = expansion.step_count() as u64;
        let unit_list = expansion
            .units
            .iter()
            .map(|u| pb::UnitSummary {
                unit_id: u.id.to_string(),
                label: u.config.label(),
                config: Some(convert::unit_config(&u.config)),
                steps: u.steps.len() as u32,
                state: pb::UnitState::Pending as i32,
                ..Default::default()
            })
            .collect();
        if req.dry_run {
            return Ok(Response::new(pb::SubmitResponse {
                campaign: expansion.campaign.name.clone(),
                units,
                steps,
                dropped,
                unit_list,
                dry_run: true,
                ..Default::default()
            }));
        }
        let actor = if let Some(token) = token.as_deref() {
            token
        } else if req.submitted_by.is_empty() {
            "anonymous"
        } else {
            req.submitted_by.as_str()
        };
        let outcome = self
            .store
            .submit(&expansion, &req.matrix_yaml, actor)
            .await
            .map_err(store_error)?;
        info!(
            campaign = %expansion.campaign.name,
            campaign_id = %outcome.campaign_id,
            units_added = outcome.units_added,
            units_kept = outcome.units_kept,
            "campaign submitted"
        );
        self.work.notify();
        self.publish(
            &outcome.campaign_id,
            "submitted",
            format!(
                "{} units added, {} kept",
                outcome.units_added, outcome.units_kept
            ),
        );
        Ok(Response::new(pb::SubmitResponse {
            campaign_id: outcome.campaign_id.to_string(),
            campaign: expansion.campaign.name.clone(),
            units,
            steps,
            units_added: outcome.units_added,
            steps_added: outcome.steps_added,
            units_kept: outcome.units_kept,
            steps_kept: outcome.steps_kept,
            dropped,
            unit_list,
            dry_run: false,
            created: outcome.created,
        }))
    }

    async fn list_campaigns(
        &self,
        _request: Request<pb::ListCampaignsRequest>,
    ) -> Result<Response<pb::ListCampaignsResponse>, Status> {
        let campaigns = self.store.list_campaigns().await.map_err(store_error)?;
        Ok(Response::new(pb::ListCampaignsResponse {
            campaigns: campaigns.iter().map(convert::campaign_info).collect(),
            store: Some(convert::store_health(&self.store.health())),
        }))
    }

    async fn get_campaign(
        &self,
        request: Request<pb::GetCampaignRequest>,
    ) -> Result<Response<pb::GetCampaignResponse>, Status> {
        let info = self.find(&request.into_inner().campaign).await?;
        let dropped = self.store.dropped(&info.id).await.map_err(store_error)?;
        let series = self
            .store
            .series_facts(info.id.as_str())
            .await
            .map_err(store_error)?;
        Ok(Response::new(pb::GetCampaignResponse {
            campaign: Some(convert::campaign_info(&info)),
            dropped: dropped.iter().map(convert::dropped).collect(),
            store: Some(convert::store_health(&self.store.health())),
            series: series.as_ref().map(convert::series_facts),
        }))
    }

    type WatchStream = EventStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let info = self.find(&request.into_inner().campaign).await?;
        // Subscribe before the snapshot so no event between the two is missed.
        let events = self.events.subscribe();
        let (tx, rx) = mpsc::channel(16);
        let store = self.store.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = watch_loop(store, info, events, tx) => {}
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn cancel(
        &self,
        request: Request<pb::CancelRequest>,
    ) -> Result<Response<pb::CancelResponse>, Status> {
        let actor = token_name(&request).unwrap_or_else(|| "operator".to_owned());
        let req = request.into_inner();
        limits::text_field("reason", &req.reason)?;
        let info = self.find(&req.campaign).await?;
        let reason = if req.reason.is_empty() {
            "cancelled by operator".to_owned()
        } else {
            req.reason
        };
        let cancelled = self
            .store
            .cancel(&info.id, &actor, &reason)
            .await
            .map_err(store_error)?;
        info!(campaign = %info.name, units = cancelled, "campaign cancelled");
        self.publish(&info.id, "cancelled", reason);
        Ok(Response::new(pb::CancelResponse {
            units_cancelled: cancelled,
        }))
    }

    async fn retry(
        &self,
        request: Request<pb::RetryRequest>,
    ) -> Result<Response<pb::RetryResponse>, Status> {
        let actor = token_name(&request).unwrap_or_else(|| "operator".to_owned());
        let info = self.find(&request.into_inner().campaign).await?;
        let retried = self
            .store
            .retry_failed(&info.id, &actor)
            .await
            .map_err(store_error)?;
        info!(campaign = %info.name, units = retried, "failed units retried");
        if retried > 0 {
            self.work.notify();
        }
        self.publish(
            &info.id,
            "retried",
            format!("{retried} units back in the queue"),
        );
        Ok(Response::new(pb::RetryResponse {
            units_retried: retried,
        }))
    }

    async fn list_units(
        &self,
        request: Request<pb::ListUnitsRequest>,
    ) -> Result<Response<pb::ListUnitsResponse>, Status> {
        let info = self.find(&request.into_inner().campaign).await?;
        let units = self.store.units(&info.id).await.map_err(store_error)?;
        Ok(Response::new(pb::ListUnitsResponse {
            units: units.iter().map(convert::unit_row).collect(),
        }))
    }

    type ResultsStream = ResultStream;

    async fn results(
        &self,
        request: Request<pb::ResultsRequest>,
    ) -> Result<Response<Self::ResultsStream>, Status> {
        let req = request.into_inner();
        let info = self.find(&req.campaign).await?;
        let pages = self
            .store
            .results(&info.id, req.include_records)
            .await
            .map_err(store_error)?
            .ok_or_else(|| Status::not_found(format!("campaign `{}` is gone", info.name)))?;
        let (tx, rx) = mpsc::channel(RESULTS_BUFFER);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = results_loop(pages, tx) => {}
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_agents(
        &self,
        _request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let agents = self.store.list_agents().await.map_err(store_error)?;
        Ok(Response::new(pb::ListAgentsResponse {
            agents: agents.iter().map(convert::agent_info).collect(),
        }))
    }

    async fn drain(
        &self,
        request: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainResponse>, Status> {
        let actor = token_name(&request).unwrap_or_else(|| "operator".to_owned());
        let req = request.into_inner();
        if req.agent_id.is_empty() {
            return Err(Status::invalid_argument("field `agent_id` is empty"));
        }
        limits::short_field("agent_id", &req.agent_id)?;
        let agent = AgentId(req.agent_id);
        let leases = self
            .store
            .drain_agent(&agent, &actor)
            .await
            .map_err(store_error)?;
        info!(agent = %agent, live_leases = leases.len(), "agent drained");
        Ok(Response::new(pb::DrainResponse { draining: true }))
    }
}

/// Feeds one `Results` call page by page, until the last result or the client hangs up.
async fn results_loop(mut pages: ResultPages, tx: mpsc::Sender<Result<pb::StepResult, Status>>) {
    loop {
        let page = tokio::select! {
            page = pages.next_page() => page,
            _ = tx.closed() => return,
        };
        match page {
            Ok(Some(page)) => {
                for result in page {
                    if tx.send(Ok(convert::step_result(result))).await.is_err() {
                        return;
                    }
                }
            }
            Ok(None) => return,
            Err(err) => {
                let _ = tx.send(Err(store_error(err))).await;
                return;
            }
        }
    }
}

/// Feeds one `Watch` call: a snapshot first, then one event per change (coalescing
/// bursts), until the campaign ends or the client hangs up.
async fn watch_loop(
    store: Store,
    mut info: CampaignInfo,
    mut events: broadcast::Receiver<CampaignEvent>,
    tx: mpsc::Sender<Result<pb::WatchEvent, Status>>,
) {
    let campaign_id = info.id.to_string();
    let mut last = watch_event(&store, &info, "snapshot", None).await;
    if tx.send(Ok(last.clone())).await.is_err() || is_terminal(info.state) {
        return;
    }
    let mut refresh = tokio::time::interval(WATCH_REFRESH);
    refresh.tick().await;
    loop {
        let trigger = tokio::select! {
            _ = tx.closed() => return,
            received = events.recv() => match received {
                Ok(event) if event.campaign_id == campaign_id => Some(event),
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    warn!(missed, "watch subscriber lagged; sending a fresh snapshot");
                    None
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = refresh.tick() => None,
        };
        info = match store.campaign(&campaign_id).await {
            Ok(Some(fresh)) => fresh,
            Ok(None) => return,
            Err(err) => {
                let _ = tx.send(Err(store_error(err))).await;
                return;
            }
        };
        let kind = trigger
            .as_ref()
            .map_or("progress", |e| e.kind.as_str())
            .to_owned();
        let event = watch_event(&store, &info, &kind, trigger.as_ref()).await;
        // Timer refreshes only go out when something changed.
        let changed = trigger.is_some() || event.campaign != last.campaign;
        if changed {
            if tx.send(Ok(event.clone())).await.is_err() {
                return;
            }
            last = event;
        }
        if is_terminal(info.state) {
            return;
        }
    }
}

async fn watch_event(
    store: &Store,
    info: &CampaignInfo,
    kind: &str,
    trigger: Option<&CampaignEvent>,
) -> pb::WatchEvent {
    let running = if info.units.leased > 0 {
        store
            .units_in_state(&info.id, UnitState::Leased)
            .await
            .map(|units| units.iter().map(convert::unit_row).collect())
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    pb::WatchEvent {
        campaign: Some(convert::campaign_info(info)),
        kind: kind.to_owned(),
        unit_id: trigger.and_then(|t| t.unit_id.clone()).unwrap_or_default(),
        unit_label: trigger
            .and_then(|t| t.unit_label.clone())
            .unwrap_or_default(),
        detail: trigger.map(|t| t.detail.clone()).unwrap_or_default(),
        at_ms: now_ms(),
        running,
    }
}
