//! `ScheduleService`: `evalctl schedule` (docs/schedules.md). Each change is checked here
//! (the name, the pattern and zone, the policies, the matrix expands) before the store
//! keeps it; the scheduler task does the firing.

use evalctl_proto::v1 as pb;
use evalctl_proto::v1::schedule_service_server::ScheduleService;
use tonic::{Request, Response, Status};

use super::status::{matrix_error, store_error};
use crate::auth::layer::token_name;
use crate::limits;
use crate::matrix;
use crate::schedule::{FireError, FireOutcome, Plan, Scheduler, campaign_name};
use crate::store::{CatchUp, FiringRow, Overlap, ScheduleFields, ScheduleRow, Store};

/// The longest schedule name: its campaigns' names add up to 24 characters to it.
const MAX_SCHEDULE_NAME: usize = 64;

/// The service.
#[derive(Clone)]
pub struct ScheduleApi {
    store: Store,
    scheduler: Scheduler,
}

impl ScheduleApi {
    /// A service over `store`, firing through `scheduler`.
    pub fn new(store: Store, scheduler: Scheduler) -> ScheduleApi {
        ScheduleApi { store, scheduler }
    }

    async fn get(&self, name: &str) -> Result<ScheduleRow, Status> {
        check_name(name)?;
        self.store
            .schedule(name)
            .await
            .map_err(store_error)?
            .ok_or_else(|| Status::not_found(format!("no schedule is named `{name}`")))
    }
}

fn actor<T>(request: &Request<T>) -> String {
    token_name(request).unwrap_or_else(|| "anonymous".to_owned())
}

fn check_name(name: &str) -> Result<(), Status> {
    let bad = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')));
    if name.is_empty() || name.len() > MAX_SCHEDULE_NAME || bad.is_some() {
        return Err(Status::invalid_argument(format!(
            "field `name`: a schedule name is letters, digits, `.`, `_` and `-`, at most \
             {MAX_SCHEDULE_NAME} characters; got `{name}`"
        )));
    }
    Ok(())
}

fn check_timing(cron: &str, timezone: &str) -> Result<Plan, Status> {
    limits::short_field("cron", cron)?;
    limits::short_field("timezone", timezone)?;
    Plan::new(cron, timezone).map_err(|e| Status::invalid_argument(format!("{e}")))
}

fn parse_catch_up(text: &str) -> Result<CatchUp, Status> {
    text.parse().map_err(|_| {
        Status::invalid_argument(format!(
            "field `catch_up`: expected `once` or `skip`, got `{text}`"
        ))
    })
}

fn parse_overlap(text: &str) -> Result<Overlap, Status> {
    text.parse().map_err(|_| {
        Status::invalid_argument(format!(
            "field `overlap`: expected `skip`, `queue` or `cancel`, got `{text}`"
        ))
    })
}

/// Checks that the matrix expands to something to run (its `campaign` name is replaced
/// by each firing's).
fn check_matrix(source_name: &str, yaml: &str) -> Result<(), Status> {
    limits::matrix(yaml)?;
    limits::text_field("source_name", source_name)?;
    let expansion = matrix::expand_str(source_name, yaml).map_err(matrix_error)?;
    expansion
        .check_not_empty(false)
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

/// Sink names as a schedule stores them: names, no commas.
fn check_sinks(sinks: &[String]) -> Result<Vec<String>, Status> {
    sinks
        .iter()
        .map(|s| {
            let s = s.trim();
            if s.is_empty() || s.contains(',') || s.len() > MAX_SCHEDULE_NAME {
                Err(Status::invalid_argument(format!(
                    "field `notify`: `{s}` is not a sink name"
                )))
            } else {
                Ok(s.to_owned())
            }
        })
        .collect()
}

fn source(name: &str) -> &str {
    if name.is_empty() {
        "<schedule matrix>"
    } else {
        name
    }
}

fn firing(f: &FiringRow) -> pb::Firing {
    pb::Firing {
        fire_at_ms: f.fire_at_ms,
        campaign: f.campaign_name.clone(),
        outcome: f.outcome.as_str().to_owned(),
        detail: f.detail.clone().unwrap_or_default(),
    }
}

/// The wire form, with the next firing (none while paused).
fn schedule(row: &ScheduleRow) -> pb::Schedule {
    let next = if row.paused {
        None
    } else {
        Plan::new(&row.cron, &row.timezone)
            .ok()
            .and_then(|p| p.next_after(row.fired_through_ms))
    };
    pb::Schedule {
        name: row.name.clone(),
        cron: row.cron.clone(),
        timezone: row.timezone.clone(),
        catch_up: row.catch_up.as_str().to_owned(),
        overlap: row.overlap.as_str().to_owned(),
        paused: row.paused,
        matrix_yaml: row.matrix_yaml.clone(),
        source_name: row.source_name.clone(),
        next_fire_at_ms: next.as_ref().map_or(0, |f| f.at_ms),
        next_campaign: next
            .map(|f| campaign_name(&row.name, &f.label))
            .unwrap_or_default(),
        last_firing: row.last_firing.as_ref().map(firing),
        created_by: row.created_by.clone(),
        created_at_ms: row.created_at_ms,
        updated_at_ms: row.updated_at_ms,
        notify: row.notify.clone(),
    }
}

fn reply(row: Option<ScheduleRow>, name: &str) -> Result<Response<pb::ScheduleReply>, Status> {
    let row = row.ok_or_else(|| Status::not_found(format!("no schedule is named `{name}`")))?;
    Ok(Response::new(pb::ScheduleReply {
        schedule: Some(schedule(&row)),
    }))
}

#[tonic::async_trait]
impl ScheduleService for ScheduleApi {
    async fn add_schedule(
        &self,
        request: Request<pb::AddScheduleRequest>,
    ) -> Result<Response<pb::ScheduleReply>, Status> {
        let actor = actor(&request);
        let req = request.into_inner();
        check_name(&req.name)?;
        let timezone = if req.timezone.is_empty() {
            "UTC"
        } else {
            req.timezone.as_str()
        };
        check_timing(&req.cron, timezone)?;
        let catch_up = if req.catch_up.is_empty() {
            CatchUp::Once
        } else {
            parse_catch_up(&req.catch_up)?
        };
        let overlap = if req.overlap.is_empty() {
            Overlap::Skip
        } else {
            parse_overlap(&req.overlap)?
        };
        let source_name = source(&req.source_name);
        check_matrix(source_name, &req.matrix_yaml)?;
        let added = self
            .store
            .add_schedule(
                &req.name,
                (&req.matrix_yaml, source_name),
                &req.cron,
                timezone,
                (catch_up, overlap),
                check_sinks(&req.notify)?,
                &actor,
            )
            .await
            .map_err(store_error)?;
        match added {
            Some(row) => reply(Some(row), &req.name),
            None => Err(Status::already_exists(format!(
                "a schedule named `{}` exists: change it with `evalctl schedule update`",
                req.name
            ))),
        }
    }

    async fn update_schedule(
        &self,
        request: Request<pb::UpdateScheduleRequest>,
    ) -> Result<Response<pb::ScheduleReply>, Status> {
        let actor = actor(&request);
        let req = request.into_inner();
        let before = self.get(&req.name).await?;
        let cron = req.cron.clone().unwrap_or(before.cron.clone());
        let timezone = req.timezone.clone().unwrap_or(before.timezone.clone());
        check_timing(&cron, &timezone)?;
        let matrix_yaml = match (&req.matrix_yaml, &req.source_name) {
            (Some(yaml), name) => {
                let name = source(name.as_deref().unwrap_or(&before.source_name)).to_owned();
                check_matrix(&name, yaml)?;
                Some((yaml.clone(), name))
            }
            (None, _) => None,
        };
        let fields = ScheduleFields {
            matrix_yaml,
            cron: req.cron,
            timezone: req.timezone,
            catch_up: req.catch_up.as_deref().map(parse_catch_up).transpose()?,
            overlap: req.overlap.as_deref().map(parse_overlap).transpose()?,
            notify: req
                .set_notify
                .then(|| check_sinks(&req.notify))
                .transpose()?,
        };
        let row = self
            .store
            .update_schedule(&req.name, fields, &actor)
            .await
            .map_err(store_error)?;
        reply(row, &req.name)
    }

    async fn list_schedules(
        &self,
        _request: Request<pb::ListSchedulesRequest>,
    ) -> Result<Response<pb::ListSchedulesResponse>, Status> {
        let rows = self.store.schedules().await.map_err(store_error)?;
        Ok(Response::new(pb::ListSchedulesResponse {
            schedules: rows.iter().map(schedule).collect(),
        }))
    }

    async fn get_schedule(
        &self,
        request: Request<pb::GetScheduleRequest>,
    ) -> Result<Response<pb::GetScheduleResponse>, Status> {
        let req = request.into_inner();
        let row = self.get(&req.name).await?;
        let limit = if req.firings == 0 {
            20
        } else {
            req.firings.min(1000)
        };
        let firings = self
            .store
            .schedule_firings(&req.name, limit)
            .await
            .map_err(store_error)?;
        Ok(Response::new(pb::GetScheduleResponse {
            schedule: Some(schedule(&row)),
            firings: firings.iter().map(firing).collect(),
        }))
    }

    async fn set_schedule_paused(
        &self,
        request: Request<pb::SetSchedulePausedRequest>,
    ) -> Result<Response<pb::ScheduleReply>, Status> {
        let actor = actor(&request);
        let req = request.into_inner();
        check_name(&req.name)?;
        let row = self
            .store
            .set_schedule_paused(&req.name, req.paused, &actor)
            .await
            .map_err(store_error)?;
        reply(row, &req.name)
    }

    async fn remove_schedule(
        &self,
        request: Request<pb::RemoveScheduleRequest>,
    ) -> Result<Response<pb::RemoveScheduleResponse>, Status> {
        let actor = actor(&request);
        let req = request.into_inner();
        check_name(&req.name)?;
        if self
            .store
            .remove_schedule(&req.name, &actor)
            .await
            .map_err(store_error)?
        {
            Ok(Response::new(pb::RemoveScheduleResponse {}))
        } else {
            Err(Status::not_found(format!(
                "no schedule is named `{}`",
                req.name
            )))
        }
    }

    async fn pin_baseline(
        &self,
        request: Request<pb::PinBaselineRequest>,
    ) -> Result<Response<pb::PinBaselineResponse>, Status> {
        let actor = actor(&request);
        let req = request.into_inner();
        check_name(&req.series)?;
        limits::short_field("campaign", &req.campaign)?;
        let pinned = self
            .store
            .pin_baseline(&req.series, &req.campaign, &actor)
            .await
            .map_err(store_error)?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no campaign `{}` in series `{}`",
                    req.campaign, req.series
                ))
            })?;
        Ok(Response::new(pb::PinBaselineResponse { campaign: pinned }))
    }

    async fn unpin_baseline(
        &self,
        request: Request<pb::UnpinBaselineRequest>,
    ) -> Result<Response<pb::UnpinBaselineResponse>, Status> {
        let actor = actor(&request);
        let req = request.into_inner();
        check_name(&req.series)?;
        if self
            .store
            .unpin_baseline(&req.series, &actor)
            .await
            .map_err(store_error)?
        {
            Ok(Response::new(pb::UnpinBaselineResponse {}))
        } else {
            Err(Status::not_found(format!(
                "series `{}` has no pinned baseline",
                req.series
            )))
        }
    }

    async fn run_schedule(
        &self,
        request: Request<pb::RunScheduleRequest>,
    ) -> Result<Response<pb::RunScheduleResponse>, Status> {
        let actor = actor(&request);
        let req = request.into_inner();
        check_name(&req.name)?;
        let outcome = self
            .scheduler
            .run_now(&req.name, &actor)
            .await
            .map_err(|e| match e {
                FireError::NotFound(_) => Status::not_found(e.to_string()),
                FireError::Busy(_) => Status::unavailable(e.to_string()),
                FireError::Store(err) => store_error(err),
            })?;
        let (campaign, outcome, detail) = match outcome {
            FireOutcome::Submitted { campaign } => (campaign, "submitted", String::new()),
            FireOutcome::SkippedOverlap { running } => (
                String::new(),
                "skipped_overlap",
                format!("campaign {running} of the series still runs"),
            ),
            FireOutcome::Failed { error } => (String::new(), "failed", error),
        };
        Ok(Response::new(pb::RunScheduleResponse {
            firing: Some(pb::Firing {
                fire_at_ms: 0,
                campaign,
                outcome: outcome.to_owned(),
                detail,
            }),
        }))
    }
}
