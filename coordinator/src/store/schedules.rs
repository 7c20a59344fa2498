//! Schedules and their firings (docs/schedules.md): the SQL of adding, changing, pausing
//! and removing schedules, of claiming firings (exactly once per schedule and instant) and
//! recording how each ended, and of the series' campaigns the overlap rule looks at.

use rusqlite::{Connection, OptionalExtension as _, Row};

use super::StoreError;
use super::audit;
use super::error::SqlContext as _;
pub use super::rows::{CatchUp, FiringOutcome, Overlap};

/// A schedule as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleRow {
    /// Its key.
    pub key: i64,
    /// Its name, also its series' name.
    pub name: String,
    /// The matrix each firing submits.
    pub matrix_yaml: String,
    /// The matrix file's name, for errors.
    pub source_name: String,
    /// The cron pattern.
    pub cron: String,
    /// IANA time zone.
    pub timezone: String,
    /// Missed firings.
    pub catch_up: CatchUp,
    /// Firing while the series runs.
    pub overlap: Overlap,
    /// Paused: no firing.
    pub paused: bool,
    /// Sinks its campaigns notify, besides those configured for every campaign.
    pub notify: Vec<String>,
    /// Every firing at or before this instant is handled, Unix ms.
    pub fired_through_ms: i64,
    /// Who added it.
    pub created_by: String,
    /// When it was added, Unix ms.
    pub created_at_ms: i64,
    /// When it last changed, Unix ms.
    pub updated_at_ms: i64,
    /// Its latest firing.
    pub last_firing: Option<FiringRow>,
}

/// A firing as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FiringRow {
    /// The schedule's key.
    pub schedule_key: i64,
    /// The firing's instant, Unix ms.
    pub fire_at_ms: i64,
    /// The campaign it submits (or would have).
    pub campaign_name: String,
    /// How it ended.
    pub outcome: FiringOutcome,
    /// Why it was skipped or failed.
    pub detail: Option<String>,
}

/// A new schedule, or the fields of one to change.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleFields {
    /// The matrix text.
    pub matrix_yaml: Option<(String, String)>,
    /// The cron pattern.
    pub cron: Option<String>,
    /// IANA time zone.
    pub timezone: Option<String>,
    /// Missed firings.
    pub catch_up: Option<CatchUp>,
    /// Overlap.
    pub overlap: Option<Overlap>,
    /// Sinks its campaigns notify.
    pub notify: Option<Vec<String>>,
}

const COLUMNS: &str = "schedule_key, name, matrix_yaml, source_name, cron, timezone, catch_up,
     overlap, paused, fired_through_ms, created_by, created_at_ms, updated_at_ms, notify";

fn read_row(r: &Row<'_>) -> rusqlite::Result<(ScheduleRow, String, String)> {
    Ok((
        ScheduleRow {
            key: r.get(0)?,
            name: r.get(1)?,
            matrix_yaml: r.get(2)?,
            source_name: r.get(3)?,
            cron: r.get(4)?,
            timezone: r.get(5)?,
            catch_up: CatchUp::Once,
            overlap: Overlap::Skip,
            paused: r.get::<_, i64>(8)? == 1,
            fired_through_ms: r.get(9)?,
            created_by: r.get(10)?,
            created_at_ms: r.get(11)?,
            updated_at_ms: r.get(12)?,
            notify: split_sinks(&r.get::<_, String>(13)?),
            last_firing: None,
        },
        r.get(6)?,
        r.get(7)?,
    ))
}

fn split_sinks(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn finish_row(
    conn: &Connection,
    (mut row, catch_up, overlap): (ScheduleRow, String, String),
) -> Result<ScheduleRow, StoreError> {
    row.catch_up = catch_up.parse().map_err(|_| StoreError::BadValue {
        column: "schedules.catch_up",
        value: catch_up.clone(),
    })?;
    row.overlap = overlap.parse().map_err(|_| StoreError::BadValue {
        column: "schedules.overlap",
        value: overlap.clone(),
    })?;
    row.last_firing = conn
        .prepare_cached(
            "SELECT schedule_key, fire_at_ms, campaign_name, outcome, detail FROM schedule_firings
             WHERE schedule_key = ?1 ORDER BY fire_at_ms DESC LIMIT 1",
        )
        .and_then(|mut s| s.query_row([row.key], read_firing).optional())
        .sql("read a schedule's last firing")?
        .map(check_firing)
        .transpose()?;
    Ok(row)
}

fn read_firing(r: &Row<'_>) -> rusqlite::Result<(i64, i64, String, String, Option<String>)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn check_firing(
    (schedule_key, fire_at_ms, campaign_name, outcome, detail): (
        i64,
        i64,
        String,
        String,
        Option<String>,
    ),
) -> Result<FiringRow, StoreError> {
    Ok(FiringRow {
        schedule_key,
        fire_at_ms,
        campaign_name,
        outcome: outcome.parse().map_err(|_| StoreError::BadValue {
            column: "schedule_firings.outcome",
            value: outcome.clone(),
        })?,
        detail,
    })
}

/// The schedule named `name`.
pub(crate) fn get(conn: &Connection, name: &str) -> Result<Option<ScheduleRow>, StoreError> {
    let raw = conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM schedules WHERE name = ?1"))
        .and_then(|mut s| s.query_row([name], read_row).optional())
        .sql("read a schedule")?;
    raw.map(|raw| finish_row(conn, raw)).transpose()
}

/// Every schedule, by name.
pub(crate) fn list(conn: &Connection) -> Result<Vec<ScheduleRow>, StoreError> {
    let raws = conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM schedules ORDER BY name"))
        .and_then(|mut s| s.query_map([], read_row)?.collect::<Result<Vec<_>, _>>())
        .sql("list schedules")?;
    raws.into_iter().map(|raw| finish_row(conn, raw)).collect()
}

/// Adds schedule `name`; its first firing is the first after `now_ms`. `None` when the
/// name is taken.
#[allow(clippy::too_many_arguments)]
pub(crate) fn add(
    conn: &Connection,
    now_ms: i64,
    name: &str,
    (matrix_yaml, source_name): (&str, &str),
    cron: &str,
    timezone: &str,
    (catch_up, overlap): (CatchUp, Overlap),
    notify: &[String],
    actor: &str,
) -> Result<Option<ScheduleRow>, StoreError> {
    let inserted = conn
        .prepare_cached(
            "INSERT INTO schedules (name, matrix_yaml, source_name, cron, timezone, catch_up,
                 overlap, paused, fired_through_ms, created_by, created_at_ms, updated_at_ms,
                 notify)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, ?8, ?9, ?8, ?8, ?10)
             ON CONFLICT (name) DO NOTHING",
        )
        .and_then(|mut s| {
            s.execute(rusqlite::params![
                name,
                matrix_yaml,
                source_name,
                cron,
                timezone,
                catch_up.as_str(),
                overlap.as_str(),
                now_ms,
                actor,
                notify.join(",")
            ])
        })
        .sql("add a schedule")?;
    if inserted == 0 {
        return Ok(None);
    }
    audit::append(
        conn,
        now_ms,
        actor,
        "schedule_add",
        name,
        &serde_json::json!({
            "cron": cron,
            "timezone": timezone,
            "catch_up": catch_up.as_str(),
            "overlap": overlap.as_str(),
            "notify": notify,
        }),
    )?;
    get(conn, name)
}

/// Changes the fields given of schedule `name`. A new pattern or time zone applies from
/// now on: firings before `now_ms` under the old one are not run. `None`: no such schedule.
pub(crate) fn update(
    conn: &Connection,
    now_ms: i64,
    name: &str,
    fields: &ScheduleFields,
    actor: &str,
) -> Result<Option<ScheduleRow>, StoreError> {
    let Some(before) = get(conn, name)? else {
        return Ok(None);
    };
    let (matrix_yaml, source_name) = fields
        .matrix_yaml
        .clone()
        .unwrap_or((before.matrix_yaml.clone(), before.source_name.clone()));
    let cron = fields.cron.clone().unwrap_or(before.cron.clone());
    let timezone = fields.timezone.clone().unwrap_or(before.timezone.clone());
    let timing_changed = cron != before.cron || timezone != before.timezone;
    let notify = fields
        .notify
        .clone()
        .unwrap_or(before.notify.clone())
        .join(",");
    conn.prepare_cached(
        "UPDATE schedules SET matrix_yaml = ?2, source_name = ?3, cron = ?4, timezone = ?5,
             catch_up = ?6, overlap = ?7, updated_at_ms = ?8,
             fired_through_ms = CASE WHEN ?9 THEN MAX(fired_through_ms, ?8)
                                     ELSE fired_through_ms END,
             notify = ?10
         WHERE schedule_key = ?1",
    )
    .and_then(|mut s| {
        s.execute(rusqlite::params![
            before.key,
            matrix_yaml,
            source_name,
            cron,
            timezone,
            fields.catch_up.unwrap_or(before.catch_up).as_str(),
            fields.overlap.unwrap_or(before.overlap).as_str(),
            now_ms,
            timing_changed,
            notify,
        ])
    })
    .sql("update a schedule")?;
    let mut changed: Vec<&str> = Vec::new();
    if fields.matrix_yaml.is_some() {
        changed.push("matrix");
    }
    for (what, given) in [
        ("cron", fields.cron.is_some()),
        ("timezone", fields.timezone.is_some()),
        ("catch_up", fields.catch_up.is_some()),
        ("overlap", fields.overlap.is_some()),
        ("notify", fields.notify.is_some()),
    ] {
        if given {
            changed.push(what);
        }
    }
    audit::append(
        conn,
        now_ms,
        actor,
        "schedule_update",
        name,
        &serde_json::json!({ "changed": changed, "cron": cron, "timezone": timezone }),
    )?;
    get(conn, name)
}

/// Pauses or resumes schedule `name`. Resuming starts from now: firings that fell during
/// the pause are not run. `None`: no such schedule.
pub(crate) fn set_paused(
    conn: &Connection,
    now_ms: i64,
    name: &str,
    paused: bool,
    actor: &str,
) -> Result<Option<ScheduleRow>, StoreError> {
    let changed = conn
        .prepare_cached(
            "UPDATE schedules SET paused = ?2, updated_at_ms = ?3,
                 fired_through_ms = CASE WHEN ?2 = 0 AND paused = 1
                                         THEN MAX(fired_through_ms, ?3)
                                         ELSE fired_through_ms END
             WHERE name = ?1",
        )
        .and_then(|mut s| s.execute(rusqlite::params![name, i64::from(paused), now_ms]))
        .sql("pause or resume a schedule")?;
    if changed == 0 {
        return Ok(None);
    }
    let action = if paused {
        "schedule_pause"
    } else {
        "schedule_resume"
    };
    audit::append(conn, now_ms, actor, action, name, &serde_json::json!({}))?;
    get(conn, name)
}

/// Removes schedule `name` and its firing records; its campaigns stay. False: no such
/// schedule.
pub(crate) fn remove(
    conn: &Connection,
    now_ms: i64,
    name: &str,
    actor: &str,
) -> Result<bool, StoreError> {
    let removed = conn
        .prepare_cached("DELETE FROM schedules WHERE name = ?1")
        .and_then(|mut s| s.execute([name]))
        .sql("remove a schedule")?;
    if removed > 0 {
        audit::append(
            conn,
            now_ms,
            actor,
            "schedule_remove",
            name,
            &serde_json::json!({}),
        )?;
    }
    Ok(removed > 0)
}

/// A firing to record when claiming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewFiring {
    /// Its instant, Unix ms.
    pub fire_at_ms: i64,
    /// Its campaign's name.
    pub campaign_name: String,
    /// `Claimed` (to run) or `Missed`.
    pub outcome: FiringOutcome,
    /// Why missed.
    pub detail: Option<String>,
}

/// Records `firings` of schedule `schedule_key` and moves its `fired_through_ms` to
/// `through_ms`, in one transaction; returns the firings this call inserted (a firing
/// already recorded is never recorded twice). A paused or removed schedule records none.
pub(crate) fn claim(
    conn: &Connection,
    now_ms: i64,
    schedule_key: i64,
    firings: &[NewFiring],
    through_ms: i64,
) -> Result<Vec<NewFiring>, StoreError> {
    let live = conn
        .prepare_cached(
            "UPDATE schedules SET fired_through_ms = MAX(fired_through_ms, ?2)
             WHERE schedule_key = ?1 AND paused = 0",
        )
        .and_then(|mut s| s.execute((schedule_key, through_ms)))
        .sql("move a schedule's firings on")?;
    if live == 0 {
        return Ok(Vec::new());
    }
    let mut inserted = Vec::new();
    for f in firings {
        if record(conn, now_ms, schedule_key, f)? {
            inserted.push(f.clone());
        }
    }
    Ok(inserted)
}

/// Records one firing; false when one is recorded at that instant already.
pub(crate) fn record(
    conn: &Connection,
    now_ms: i64,
    schedule_key: i64,
    f: &NewFiring,
) -> Result<bool, StoreError> {
    let n = conn
        .prepare_cached(
            "INSERT INTO schedule_firings
                 (schedule_key, fire_at_ms, campaign_name, outcome, detail, recorded_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT DO NOTHING",
        )
        .and_then(|mut s| {
            s.execute(rusqlite::params![
                schedule_key,
                f.fire_at_ms,
                f.campaign_name,
                f.outcome.as_str(),
                f.detail,
                now_ms
            ])
        })
        .sql("record a firing")?;
    Ok(n > 0)
}

/// Records how a claimed firing ended; a submitted one's campaign joins the series.
pub(crate) fn finish(
    conn: &Connection,
    now_ms: i64,
    schedule_key: i64,
    fire_at_ms: i64,
    outcome: FiringOutcome,
    detail: Option<&str>,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE schedule_firings SET outcome = ?3, detail = ?4, recorded_at_ms = ?5
         WHERE schedule_key = ?1 AND fire_at_ms = ?2",
    )
    .and_then(|mut s| {
        s.execute(rusqlite::params![
            schedule_key,
            fire_at_ms,
            outcome.as_str(),
            detail,
            now_ms
        ])
    })
    .sql("record how a firing ended")?;
    if outcome == FiringOutcome::Submitted {
        conn.prepare_cached(
            "UPDATE campaigns SET series = (SELECT name FROM schedules WHERE schedule_key = ?1)
             WHERE name = (SELECT campaign_name FROM schedule_firings
                           WHERE schedule_key = ?1 AND fire_at_ms = ?2)",
        )
        .and_then(|mut s| s.execute((schedule_key, fire_at_ms)))
        .sql("add a campaign to its series")?;
    }
    Ok(())
}

/// Firings claimed and not yet finished (a coordinator stopped between the two), oldest
/// first, with their schedules.
pub(crate) fn unfinished(conn: &Connection) -> Result<Vec<FiringRow>, StoreError> {
    let raws = conn
        .prepare_cached(
            "SELECT schedule_key, fire_at_ms, campaign_name, outcome, detail FROM schedule_firings
             WHERE outcome = 'claimed' ORDER BY fire_at_ms",
        )
        .and_then(|mut s| s.query_map([], read_firing)?.collect::<Result<Vec<_>, _>>())
        .sql("read unfinished firings")?;
    raws.into_iter().map(check_firing).collect()
}

/// The firings of schedule `name`, newest first, at most `limit`.
pub(crate) fn firings(
    conn: &Connection,
    name: &str,
    limit: u32,
) -> Result<Vec<FiringRow>, StoreError> {
    let raws = conn
        .prepare_cached(
            "SELECT f.schedule_key, f.fire_at_ms, f.campaign_name, f.outcome, f.detail
             FROM schedule_firings f JOIN schedules s USING (schedule_key)
             WHERE s.name = ?1 ORDER BY f.fire_at_ms DESC LIMIT ?2",
        )
        .and_then(|mut s| {
            s.query_map(rusqlite::params![name, limit], read_firing)?
                .collect::<Result<Vec<_>, _>>()
        })
        .sql("read a schedule's firings")?;
    raws.into_iter().map(check_firing).collect()
}

/// The id and name of the newest campaign of `series` other than `except` that has not
/// ended (it has pending or leased units).
pub(crate) fn running_in_series(
    conn: &Connection,
    series: &str,
    except: &str,
) -> Result<Option<(String, String)>, StoreError> {
    conn.prepare_cached(
        "SELECT c.id, c.name FROM campaigns c
         WHERE c.series = ?1 AND c.name != ?2
           AND EXISTS (SELECT 1 FROM units u WHERE u.campaign_key = c.campaign_key
                       AND u.state IN ('pending', 'leased'))
         ORDER BY c.created_at_ms DESC LIMIT 1",
    )
    .and_then(|mut s| {
        s.query_row((series, except), |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
    })
    .sql("find a running campaign of the series")
    .map_err(StoreError::from)
}

/// The schedule operations of the store, each one read or one write.
impl super::Store {
    /// Adds a schedule (`None`: the name is taken). Audited.
    #[allow(clippy::too_many_arguments)]
    pub async fn add_schedule(
        &self,
        name: &str,
        matrix: (&str, &str),
        cron: &str,
        timezone: &str,
        policies: (CatchUp, Overlap),
        notify: Vec<String>,
        actor: &str,
    ) -> Result<Option<ScheduleRow>, StoreError> {
        let (name, yaml, source) = (name.to_owned(), matrix.0.to_owned(), matrix.1.to_owned());
        let (cron, timezone, actor) = (cron.to_owned(), timezone.to_owned(), actor.to_owned());
        self.write(move |conn, now_ms| {
            add(
                conn,
                now_ms,
                &name,
                (&yaml, &source),
                &cron,
                &timezone,
                policies,
                &notify,
                &actor,
            )
        })
        .await
    }

    /// Changes a schedule's fields (`None`: no such schedule). Audited.
    pub async fn update_schedule(
        &self,
        name: &str,
        fields: ScheduleFields,
        actor: &str,
    ) -> Result<Option<ScheduleRow>, StoreError> {
        let (name, actor) = (name.to_owned(), actor.to_owned());
        self.write(move |conn, now_ms| update(conn, now_ms, &name, &fields, &actor))
            .await
    }

    /// Pauses or resumes a schedule (`None`: no such schedule). Audited.
    pub async fn set_schedule_paused(
        &self,
        name: &str,
        paused: bool,
        actor: &str,
    ) -> Result<Option<ScheduleRow>, StoreError> {
        let (name, actor) = (name.to_owned(), actor.to_owned());
        self.write(move |conn, now_ms| set_paused(conn, now_ms, &name, paused, &actor))
            .await
    }

    /// Removes a schedule (false: no such schedule). Audited.
    pub async fn remove_schedule(&self, name: &str, actor: &str) -> Result<bool, StoreError> {
        let (name, actor) = (name.to_owned(), actor.to_owned());
        self.write(move |conn, now_ms| remove(conn, now_ms, &name, &actor))
            .await
    }

    /// One schedule.
    pub async fn schedule(&self, name: &str) -> Result<Option<ScheduleRow>, StoreError> {
        let name = name.to_owned();
        self.read(move |conn| get(conn, &name)).await
    }

    /// Every schedule, by name.
    pub async fn schedules(&self) -> Result<Vec<ScheduleRow>, StoreError> {
        self.read(list).await
    }

    /// A schedule's firings, newest first.
    pub async fn schedule_firings(
        &self,
        name: &str,
        limit: u32,
    ) -> Result<Vec<FiringRow>, StoreError> {
        let name = name.to_owned();
        self.read(move |conn| firings(conn, &name, limit)).await
    }

    /// Records firings and moves the schedule on; returns those newly recorded.
    pub async fn claim_firings(
        &self,
        schedule_key: i64,
        firings: Vec<NewFiring>,
        through_ms: i64,
    ) -> Result<Vec<NewFiring>, StoreError> {
        self.write(move |conn, now_ms| claim(conn, now_ms, schedule_key, &firings, through_ms))
            .await
    }

    /// Records one firing outside the pattern (`run-now`), paused or not; false when a
    /// firing is recorded at that instant already.
    /// Audited as `schedule_run` by `actor`.
    pub async fn claim_firing_now(
        &self,
        schedule: &str,
        schedule_key: i64,
        firing: NewFiring,
        actor: &str,
    ) -> Result<bool, StoreError> {
        let (schedule, actor) = (schedule.to_owned(), actor.to_owned());
        self.write(move |conn, now_ms| {
            let recorded = record(conn, now_ms, schedule_key, &firing)?;
            if recorded {
                audit::append(
                    conn,
                    now_ms,
                    &actor,
                    "schedule_run",
                    &schedule,
                    &serde_json::json!({ "campaign": firing.campaign_name }),
                )?;
            }
            Ok(recorded)
        })
        .await
    }

    /// Records how a claimed firing ended.
    pub async fn finish_firing(
        &self,
        schedule_key: i64,
        fire_at_ms: i64,
        outcome: FiringOutcome,
        detail: Option<String>,
    ) -> Result<(), StoreError> {
        self.write(move |conn, now_ms| {
            finish(
                conn,
                now_ms,
                schedule_key,
                fire_at_ms,
                outcome,
                detail.as_deref(),
            )
        })
        .await
    }

    /// Firings claimed and never finished.
    pub async fn unfinished_firings(&self) -> Result<Vec<FiringRow>, StoreError> {
        self.read(unfinished).await
    }

    /// The newest campaign of `series` other than `except` that has not ended: (id, name).
    pub async fn running_in_series(
        &self,
        series: &str,
        except: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        let (series, except) = (series.to_owned(), except.to_owned());
        self.read(move |conn| running_in_series(conn, &series, &except))
            .await
    }

    /// The schedule with key `key`.
    pub async fn schedule_by_key(&self, key: i64) -> Result<Option<ScheduleRow>, StoreError> {
        self.read(move |conn| {
            let name: Option<String> = conn
                .prepare_cached("SELECT name FROM schedules WHERE schedule_key = ?1")
                .and_then(|mut s| s.query_row([key], |r| r.get(0)).optional())
                .sql("read a schedule's name")?;
            name.map(|n| get(conn, &n)).transpose().map(Option::flatten)
        })
        .await
    }
}
