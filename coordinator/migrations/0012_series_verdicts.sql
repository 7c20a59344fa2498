-- 0012_series_verdicts: a series' baseline and each finished campaign's verdict against
-- it (docs/schedules.md#baselines-and-verdicts).
--
-- The baseline of a campaign of a series is the campaign pinned for the series, else the
-- newest campaign of the series created before it that succeeded. The verdict is written
-- once, when the campaign has ended (no pending or leased unit left).
CREATE TABLE series_baselines (
    series        TEXT PRIMARY KEY,
    campaign_key  INTEGER NOT NULL REFERENCES campaigns (campaign_key),
    pinned_by     TEXT NOT NULL,
    pinned_at_ms  INTEGER NOT NULL
) STRICT;

CREATE TABLE campaign_verdicts (
    campaign_key  INTEGER PRIMARY KEY REFERENCES campaigns (campaign_key),
    baseline_key  INTEGER REFERENCES campaigns (campaign_key),   -- NULL: no baseline
    outcome       TEXT NOT NULL
                  CHECK (outcome IN ('passed', 'regressed', 'no_baseline', 'no_common_steps')),
    regressions   INTEGER NOT NULL,
    improvements  INTEGER NOT NULL,
    matched_steps INTEGER NOT NULL,
    worst_json    TEXT NOT NULL,   -- the worst regressions (at most 5), as JSON
    judged_at_ms  INTEGER NOT NULL
) STRICT;
