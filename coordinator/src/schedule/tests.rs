//! The scheduler against a real store with a simulated clock: a month of firings through
//! both daylight-saving changes with the coordinator down for three days, the overlap
//! rules, and a firing left half done by a stopped coordinator.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{TimeZone, Utc};

use super::Scheduler;
use crate::store::{
    CatchUp, Clock, FiringOutcome, Overlap, Store, StoreError, store_with_test_clock,
};
use crate::work::WorkSignal;
use evalctl_common::sqlite::SqlContext as _;

const MATRIX: &str = "campaign: ignored
models: [{ name: m, path: m }]
frameworks: [{ name: sim }]
quantizations: [{ name: bf16, bits: 16 }]
workloads:
  - name: chat
    dataset: { kind: random, input_tokens: 8, output_tokens: 4 }
    load: { concurrency: [1] }
    requests: 4
";

struct Harness {
    _dir: tempfile::TempDir,
    now: Arc<AtomicI64>,
    store: Store,
    scheduler: Scheduler,
}

impl Harness {
    async fn at(start_ms: i64) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let (store, now) = store_with_test_clock(&dir.path().join("db.sqlite"), start_ms).await;
        let reading = Arc::clone(&now);
        let clock = Clock::from_fn(move || reading.load(Ordering::SeqCst));
        let scheduler = Scheduler::new(store.clone(), WorkSignal::new()).with_clock(clock);
        Harness {
            _dir: dir,
            now,
            store,
            scheduler,
        }
    }

    async fn add(&self, name: &str, cron: &str, zone: &str, catch_up: CatchUp, overlap: Overlap) {
        self.store
            .add_schedule(
                name,
                (MATRIX, "m.yaml"),
                cron,
                zone,
                (catch_up, overlap),
                Vec::new(),
                "test",
            )
            .await
            .unwrap()
            .unwrap();
    }

    /// Moves the clock to `to_ms` in steps of `step_ms`, ticking after each step.
    async fn run_until(&self, to_ms: i64, step_ms: i64) -> Result<(), StoreError> {
        while self.now.load(Ordering::SeqCst) < to_ms {
            self.now.fetch_add(step_ms, Ordering::SeqCst);
            self.scheduler.tick().await?;
        }
        Ok(())
    }

    /// Names of the stored campaigns of series `series`.
    async fn campaigns(&self, series: &str) -> Vec<String> {
        let series = series.to_owned();
        self.store
            .read(move |conn| {
                let names = conn
                    .prepare("SELECT name FROM campaigns WHERE series = ?1 ORDER BY name")
                    .and_then(|mut s| {
                        s.query_map([series], |r| r.get(0))?
                            .collect::<Result<Vec<String>, _>>()
                    })
                    .sql("read the series")?;
                Ok(names)
            })
            .await
            .unwrap()
    }

    async fn outcomes(&self, name: &str) -> Vec<FiringOutcome> {
        self.store
            .schedule_firings(name, 100_000)
            .await
            .unwrap()
            .into_iter()
            .map(|f| f.outcome)
            .collect()
    }
}

fn utc_ms(y: i32, mo: u32, d: u32, h: u32) -> i64 {
    Utc.with_ymd_and_hms(y, mo, d, h, 0, 0)
        .single()
        .unwrap()
        .timestamp_millis()
}

/// A month across the spring change in Berlin (29 March 2026, 02:00 CET → 03:00 CEST), with
/// the coordinator down for three days: a daily fixed-time schedule in the missing hour and
/// an hourly one, both catching up once. Expected counts come from the calendar, not from
/// the scheduler's own rules.
#[tokio::test]
async fn a_simulated_spring_month_with_three_days_down_fires_once_per_firing() {
    let start = utc_ms(2026, 3, 15, 0);
    let end = utc_ms(2026, 4, 15, 0);
    let h = Harness::at(start).await;
    h.add(
        "daily",
        "30 2 * * *",
        "Europe/Berlin",
        CatchUp::Once,
        Overlap::Queue,
    )
    .await;
    h.add(
        "hourly",
        "0 * * * *",
        "Europe/Berlin",
        CatchUp::Once,
        Overlap::Queue,
    )
    .await;
    // Up until 1 April 00:00 UTC, down for three days, up again to the end.
    let down = utc_ms(2026, 4, 1, 0);
    let up = utc_ms(2026, 4, 4, 0);
    h.run_until(down, 10 * 60_000).await.unwrap();
    h.now.store(up, Ordering::SeqCst);
    h.run_until(end, 10 * 60_000).await.unwrap();

    // Daily: 31 local days (15 March .. 14 April), each named once. 1, 2 and 3 April fell
    // while down: the latest (3 April) runs on return, the other two are missed.
    let daily = h.campaigns("daily").await;
    assert_eq!(daily.len(), 31 - 2, "{daily:?}");
    assert!(
        daily.contains(&"daily-2026-03-29T02.30".to_owned()),
        "the gap day fires"
    );
    assert!(daily.contains(&"daily-2026-04-03T02.30".to_owned()));
    assert!(!daily.contains(&"daily-2026-04-02T02.30".to_owned()));
    let outcomes = h.outcomes("daily").await;
    assert_eq!(outcomes.len(), 31);
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == FiringOutcome::Missed)
            .count(),
        2
    );
    // The gap day's firing is at the jump, 01:00 UTC (03:00 CEST).
    let gap_day = h
        .store
        .schedule_firings("daily", 100)
        .await
        .unwrap()
        .into_iter()
        .find(|f| f.campaign_name == "daily-2026-03-29T02.30")
        .unwrap();
    assert_eq!(gap_day.fire_at_ms, utc_ms(2026, 3, 29, 1));

    // Hourly: one firing per UTC hour of the month (whole-hour offsets), 72 of them while
    // down, of which one runs.
    let hours = ((end - start) / 3_600_000) as usize;
    let hourly = h.campaigns("hourly").await;
    assert_eq!(hourly.len(), hours - 71);
    assert_eq!(h.outcomes("hourly").await.len(), hours);
    // Every campaign has a distinct name: no firing submitted twice.
    let mut names = hourly.clone();
    names.dedup();
    assert_eq!(names.len(), hourly.len());
}

/// The autumn change in New York (1 November 2026, 02:00 EDT → 01:00 EST): a fixed-time
/// schedule in the repeated hour fires once that night, an hourly one fires in both passes.
#[tokio::test]
async fn the_autumn_repeat_fires_a_fixed_time_once_and_an_interval_twice() {
    let start = utc_ms(2026, 10, 31, 12);
    let h = Harness::at(start).await;
    h.add(
        "nightly",
        "30 1 * * *",
        "America/New_York",
        CatchUp::Once,
        Overlap::Queue,
    )
    .await;
    h.add(
        "hourly",
        "0 * * * *",
        "America/New_York",
        CatchUp::Once,
        Overlap::Queue,
    )
    .await;
    h.run_until(utc_ms(2026, 11, 2, 12), 5 * 60_000)
        .await
        .unwrap();
    assert_eq!(
        h.campaigns("nightly").await,
        ["nightly-2026-11-01T01.30", "nightly-2026-11-02T01.30"]
    );
    let hourly = h.campaigns("hourly").await;
    assert_eq!(hourly.len(), 48);
    assert!(hourly.contains(&"hourly-2026-11-01T01.00a".to_owned()));
    assert!(hourly.contains(&"hourly-2026-11-01T01.00b".to_owned()));
}

/// With catch-up `skip`, firings that fell while down are recorded and none runs.
#[tokio::test]
async fn catch_up_skip_runs_nothing_missed() {
    let start = utc_ms(2026, 6, 1, 0);
    let h = Harness::at(start).await;
    h.add("skipper", "0 * * * *", "UTC", CatchUp::Skip, Overlap::Queue)
        .await;
    h.now
        .store(utc_ms(2026, 6, 1, 5) + 30 * 60_000, Ordering::SeqCst);
    h.scheduler.tick().await.unwrap();
    assert!(h.campaigns("skipper").await.is_empty());
    assert_eq!(h.outcomes("skipper").await, vec![FiringOutcome::Missed; 5]);
    // The next one is on time and runs.
    h.run_until(utc_ms(2026, 6, 1, 6) + 1_000, 1_000)
        .await
        .unwrap();
    assert_eq!(h.campaigns("skipper").await, ["skipper-2026-06-01T06.00"]);
}

/// Overlap: the series' campaigns never end here (no agent runs them).
#[tokio::test]
async fn overlap_skips_queues_or_cancels_the_running_campaign() {
    let start = utc_ms(2026, 6, 1, 0);
    for (overlap, submitted, skipped) in [
        (Overlap::Skip, 1, 2),
        (Overlap::Queue, 3, 0),
        (Overlap::Cancel, 3, 0),
    ] {
        let h = Harness::at(start).await;
        h.add("s", "0 * * * *", "UTC", CatchUp::Once, overlap).await;
        h.run_until(utc_ms(2026, 6, 1, 3) + 1_000, 60_000)
            .await
            .unwrap();
        let outcomes = h.outcomes("s").await;
        let count = |o: FiringOutcome| outcomes.iter().filter(|x| **x == o).count();
        assert_eq!(
            (
                count(FiringOutcome::Submitted),
                count(FiringOutcome::SkippedOverlap)
            ),
            (submitted, skipped),
            "{overlap:?}: {outcomes:?}"
        );
        if overlap == Overlap::Cancel {
            let running = h.store.running_in_series("s", "").await.unwrap();
            assert_eq!(running.map(|r| r.1).as_deref(), Some("s-2026-06-01T03.00"));
        }
    }
}

/// A coordinator stopped after claiming a firing (before or after submitting its campaign)
/// finishes it on the next tick: one campaign either way.
#[tokio::test]
async fn a_firing_left_claimed_is_finished_once() {
    let start = utc_ms(2026, 6, 1, 0);
    let h = Harness::at(start).await;
    h.add("s", "0 * * * *", "UTC", CatchUp::Once, Overlap::Queue)
        .await;
    let key = h.store.schedule("s").await.unwrap().unwrap().key;
    // Claimed, nothing submitted.
    let claim = |at: i64, name: &str| crate::store::NewFiring {
        fire_at_ms: at,
        campaign_name: name.to_owned(),
        outcome: FiringOutcome::Claimed,
        detail: None,
    };
    h.store
        .claim_firings(
            key,
            vec![claim(utc_ms(2026, 6, 1, 1), "s-2026-06-01T01.00")],
            utc_ms(2026, 6, 1, 1),
        )
        .await
        .unwrap();
    h.now.store(utc_ms(2026, 6, 1, 1) + 500, Ordering::SeqCst);
    h.scheduler.tick().await.unwrap();
    h.scheduler.tick().await.unwrap();
    assert_eq!(h.campaigns("s").await, ["s-2026-06-01T01.00"]);
    assert_eq!(h.outcomes("s").await, [FiringOutcome::Submitted]);
}

/// `run-now` fires at once, even paused, and records the firing.
#[tokio::test]
async fn run_now_fires_a_paused_schedule() {
    let h = Harness::at(utc_ms(2026, 6, 1, 0)).await;
    h.add("s", "0 0 1 1 *", "UTC", CatchUp::Once, Overlap::Skip)
        .await;
    h.store
        .set_schedule_paused("s", true, "test")
        .await
        .unwrap();
    let outcome = h.scheduler.run_now("s", "test").await.unwrap();
    assert_eq!(
        outcome,
        super::FireOutcome::Submitted {
            campaign: "s-2026-06-01T00.00.00.000-now".into()
        }
    );
    // The series now runs: a second run-now is skipped by the overlap rule.
    h.now.fetch_add(1_000, Ordering::SeqCst);
    let again = h.scheduler.run_now("s", "test").await.unwrap();
    assert!(
        matches!(again, super::FireOutcome::SkippedOverlap { .. }),
        "{again:?}"
    );
}
