//! Human durations ("30s", "2m", "1h 30m") in config files, through `humantime`.
//!
//! Command-line flags parse with `humantime::parse_duration` directly (clap's
//! `value_parser`); this module holds the serde side, which humantime does not ship.

/// Serde adapter for `Option<Duration>` fields written as humantime strings:
/// `#[serde(default, with = "evalctl_common::duration::optional")]`.
pub mod optional {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Reads an absent value or a string such as "30s".
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| humantime::parse_duration(&t).map_err(serde::de::Error::custom))
            .transpose()
    }

    /// Writes the value as humantime text ("1m 30s"), or nothing.
    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Config {
        #[serde(default, with = "super::optional")]
        ttl: Option<Duration>,
    }

    #[test]
    fn reads_and_writes_human_durations() {
        let config: Config = serde_json::from_str(r#"{"ttl": "1m 30s"}"#).unwrap();
        assert_eq!(config.ttl, Some(Duration::from_secs(90)));
        assert_eq!(
            serde_json::to_string(&config).unwrap(),
            r#"{"ttl":"1m 30s"}"#
        );
        let absent: Config = serde_json::from_str("{}").unwrap();
        assert_eq!(absent.ttl, None);
    }

    #[test]
    fn a_bad_duration_is_an_error_naming_the_text() {
        let err = serde_json::from_str::<Config>(r#"{"ttl": "soon"}"#).unwrap_err();
        assert!(err.to_string().contains("expected number"), "{err}");
    }
}
