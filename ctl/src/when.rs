//! Points in time on the command line (`evalctl audit --since 1h --until 2025-06-01T12:00:00Z`):
//! an RFC 3339 time with its offset, or a duration before now in humantime's words (`90s`,
//! `30m`, `1h`, `7d`, `1h 30m`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A time argument that is neither an RFC 3339 time nor a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a time: expected an RFC 3339 time (2025-06-01T12:00:00Z, \
     2025-06-01T14:00:00+02:00) or a duration before now (90s, 30m, 1h, 7d)"
)]
pub struct BadTime(pub String);

/// Parses `text` as Unix milliseconds, a duration being counted back from `now`.
pub fn parse_at(text: &str, now: SystemTime) -> Result<i64, BadTime> {
    let text = text.trim();
    let bad = || BadTime(text.to_owned());
    if let Ok(time) = OffsetDateTime::parse(text, &Rfc3339) {
        let ms = time.unix_timestamp_nanos() / 1_000_000;
        return i64::try_from(ms).ok().filter(|ms| *ms > 0).ok_or_else(bad);
    }
    let ago = humantime::parse_duration(text).map_err(|_| bad())?;
    let at = now.checked_sub(ago).ok_or_else(bad)?;
    let since_epoch = at.duration_since(UNIX_EPOCH).map_err(|_| bad())?;
    i64::try_from(since_epoch.as_millis())
        .ok()
        .filter(|ms| *ms > 0)
        .ok_or_else(bad)
}

/// Parses a time argument against the clock now (clap's `value_parser`).
pub fn parse(text: &str) -> Result<i64, BadTime> {
    parse_at(text, SystemTime::now())
}

/// Unix milliseconds as a `SystemTime`.
fn from_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// Unix milliseconds as an RFC 3339 UTC time with milliseconds (what `--json` prints).
pub fn rfc3339_ms(ms: i64) -> String {
    humantime::format_rfc3339_millis(from_ms(ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW_MS: i64 = 1_750_000_000_000;

    fn now() -> SystemTime {
        from_ms(NOW_MS)
    }

    #[test]
    fn rfc3339_times_with_offsets_and_durations_before_now() {
        assert_eq!(
            parse_at("2025-06-01T12:00:00Z", now()),
            Ok(1_748_779_200_000)
        );
        assert_eq!(
            parse_at("2025-06-01T14:00:00+02:00", now()),
            Ok(1_748_779_200_000)
        );
        assert_eq!(
            parse_at("2025-06-01T12:00:00.250Z", now()),
            Ok(1_748_779_200_250)
        );
        assert_eq!(parse_at("1h", now()), Ok(NOW_MS - 3_600_000));
        assert_eq!(parse_at("90s", now()), Ok(NOW_MS - 90_000));
        assert_eq!(parse_at("7d", now()), Ok(NOW_MS - 7 * 86_400_000));
        assert_eq!(parse_at("1h 30m", now()), Ok(NOW_MS - 5_400_000));
    }

    #[test]
    fn anything_else_is_refused_with_the_accepted_forms() {
        for bad in ["", "yesterday", "2025-06-01", "12:00", "-1h", "100000y"] {
            let err = parse_at(bad, now()).unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains("RFC 3339") && text.contains("1h"),
                "{bad}: {text}"
            );
        }
    }

    proptest! {
        /// Every time printed as RFC 3339 reads back as itself.
        #[test]
        fn printed_times_read_back(ms in 1i64..4_000_000_000_000) {
            prop_assert_eq!(parse_at(&rfc3339_ms(ms), now()), Ok(ms));
        }

        /// A duration in seconds counts back from now.
        #[test]
        fn durations_count_back_from_now(secs in 0u64..1_000_000_000) {
            let text = humantime::format_duration(Duration::from_secs(secs)).to_string();
            prop_assert_eq!(parse_at(&text, now()), Ok(NOW_MS - i64::try_from(secs).unwrap() * 1000));
        }
    }
}
