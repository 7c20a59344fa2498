//! The events the coordinator announces and their payload: one JSON document per event,
//! which each sink renders its own way (docs/notifications.md).

use serde_json::{Value, json};

use crate::store::notify::{EndedCampaign, StalledCampaign};
use crate::store::series::VerdictRow;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A campaign ended with every unit succeeded (or cancelled), with its verdict.
    CampaignFinished,
    /// A campaign ended with failed units.
    CampaignFailed,
    /// A campaign of a series regressed against its baseline.
    Regression,
    /// A campaign with work left made no progress for `stall_after`.
    CampaignStalled,
    /// An agent stopped heartbeating.
    AgentLost,
    /// Many preemptions in a short window.
    PreemptionStorm,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [EventKind; 6] = [
        EventKind::CampaignFinished,
        EventKind::CampaignFailed,
        EventKind::Regression,
        EventKind::CampaignStalled,
        EventKind::AgentLost,
        EventKind::PreemptionStorm,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::CampaignFinished => "campaign_finished",
            EventKind::CampaignFailed => "campaign_failed",
            EventKind::Regression => "regression",
            EventKind::CampaignStalled => "campaign_stalled",
            EventKind::AgentLost => "agent_lost",
            EventKind::PreemptionStorm => "preemption_storm",
        }
    }

    /// Reads a wire name.
    pub fn parse(text: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

/// An event ready to queue.
#[derive(Debug, Clone)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// Once per what happened: `ended:42`, `agent_lost:gpu-7:1765…`.
    pub dedupe_key: String,
    /// The series of its campaign, for the sinks a schedule names.
    pub series: Option<String>,
    /// The payload without `event_id` and `at_ms` (added when queued).
    pub payload: Value,
}

fn verdict_json(v: &VerdictRow) -> Value {
    json!({
        "outcome": v.outcome,
        "baseline": v.baseline,
        "regressions": v.regressions,
        "improvements": v.improvements,
        "matched_steps": v.matched_steps,
        "worst": v.worst.iter().map(|c| json!({
            "config": c.config, "workload": c.workload, "load": c.load,
            "metric": c.metric, "change_pct": c.change * 100.0,
        })).collect::<Vec<_>>(),
    })
}

fn report_command(campaign: &str) -> String {
    format!("evalctl report {campaign} -o {campaign}.html")
}

/// The events of a campaign that ended: finished or failed, and a regression.
pub fn ended(c: &EndedCampaign) -> Vec<Event> {
    let failed = c.failed > 0;
    let kind = if failed {
        EventKind::CampaignFailed
    } else {
        EventKind::CampaignFinished
    };
    let verdict = c.verdict.as_ref();
    let verdict_text = match verdict {
        Some(v) if v.outcome == "regressed" => format!(
            "; REGRESSED against {}: {} regressions",
            v.baseline.as_deref().unwrap_or("its baseline"),
            v.regressions
        ),
        Some(v) if v.outcome == "passed" => format!(
            "; passed against {}",
            v.baseline.as_deref().unwrap_or("its baseline")
        ),
        Some(v) => format!("; verdict {}", v.outcome),
        None => String::new(),
    };
    let title = format!(
        "{} {}{}",
        c.name,
        if failed { "failed" } else { "finished" },
        verdict_text
    );
    let campaign = json!({
        "name": c.name, "id": c.id, "series": c.series,
        "units_succeeded": c.succeeded, "units_failed": c.failed, "units_cancelled": c.cancelled,
    });
    let text = format!(
        "Campaign {}: {} units succeeded, {} failed, {} cancelled{}.",
        c.name, c.succeeded, c.failed, c.cancelled, verdict_text
    );
    let mut events = vec![Event {
        kind,
        dedupe_key: format!("ended:{}", c.key),
        series: c.series.clone(),
        payload: json!({
            "kind": kind.as_str(), "title": title, "text": text, "campaign": campaign,
            "verdict": verdict.map(verdict_json), "report_command": report_command(&c.name),
        }),
    }];
    if let Some(v) = verdict.filter(|v| v.outcome == "regressed") {
        let title = format!(
            "{} regressed against {}: {} regressions",
            c.name,
            v.baseline.as_deref().unwrap_or("its baseline"),
            v.regressions
        );
        events.push(Event {
            kind: EventKind::Regression,
            dedupe_key: format!("regression:{}", c.key),
            series: c.series.clone(),
            payload: json!({
                "kind": EventKind::Regression.as_str(), "title": title, "text": title,
                "campaign": campaign, "verdict": verdict_json(v),
                "report_command": report_command(&c.name),
            }),
        });
    }
    events
}

/// A stalled campaign.
pub fn stalled(c: &StalledCampaign, now_ms: i64) -> Event {
    let minutes = (now_ms - c.last_progress_ms) / 60_000;
    let title = format!("{} made no progress for {minutes} min", c.name);
    Event {
        kind: EventKind::CampaignStalled,
        dedupe_key: format!("stalled:{}:{}", c.key, c.last_progress_ms),
        series: c.series.clone(),
        payload: json!({
            "kind": EventKind::CampaignStalled.as_str(), "title": title,
            "text": format!("{title}: units are pending or running and nothing was stored since then. Check `evalctl status {}` and `evalctl agents`.", c.name),
            "campaign": {"name": c.name, "series": c.series},
            "last_progress_ms": c.last_progress_ms,
        }),
    }
}

/// An agent lost.
pub fn agent_lost(id: &str, host: &str, last_heartbeat_ms: i64) -> Event {
    let title = format!("agent {id} on {host} is lost");
    Event {
        kind: EventKind::AgentLost,
        dedupe_key: format!("agent_lost:{id}:{last_heartbeat_ms}"),
        series: None,
        payload: json!({
            "kind": EventKind::AgentLost.as_str(), "title": title,
            "text": format!("{title}: no heartbeat since its last one; its units go back to the queue when their leases expire."),
            "agent": {"id": id, "host": host, "last_heartbeat_ms": last_heartbeat_ms},
        }),
    }
}

/// A preemption storm in window number `bucket`.
pub fn storm(count: u64, window_s: u64, bucket: i64) -> Event {
    let title = format!("{count} preemptions in the last {window_s} s");
    Event {
        kind: EventKind::PreemptionStorm,
        dedupe_key: format!("storm:{bucket}"),
        series: None,
        payload: json!({
            "kind": EventKind::PreemptionStorm.as_str(), "title": title,
            "text": format!("{title}: spot capacity may be going away."),
            "preemptions": count, "window_s": window_s,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regressed_campaign_raises_its_end_and_a_regression_once_each() {
        let campaign = EndedCampaign {
            key: 7,
            id: "id".into(),
            name: "nightly-3".into(),
            series: Some("nightly".into()),
            succeeded: 2,
            failed: 0,
            cancelled: 0,
            verdict: Some(VerdictRow {
                outcome: "regressed".into(),
                baseline: Some("nightly-2".into()),
                regressions: 2,
                improvements: 0,
                matched_steps: 3,
                worst: Vec::new(),
                judged_at_ms: 1,
            }),
        };
        let events = ended(&campaign);
        let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, [EventKind::CampaignFinished, EventKind::Regression]);
        assert_eq!(events[0].dedupe_key, "ended:7");
        assert_eq!(events[1].dedupe_key, "regression:7");
        assert!(
            events[0].payload["title"]
                .as_str()
                .unwrap()
                .contains("REGRESSED against nightly-2")
        );
        assert_eq!(
            events[1].payload["report_command"],
            "evalctl report nightly-3 -o nightly-3.html"
        );
        // Failed units make it a failure, and a campaign without a series has no verdict.
        let failed = EndedCampaign {
            failed: 1,
            series: None,
            verdict: None,
            ..campaign
        };
        let events = ended(&failed);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, EventKind::CampaignFailed);
    }
}
