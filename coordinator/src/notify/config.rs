//! Notification sinks as the coordinator's config file declares them (`[notify]`,
//! docs/notifications.md), checked at start: names unique, URLs http(s), events known,
//! secret and password files readable.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::event::EventKind;

/// `[notify]` of the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyFile {
    /// A campaign with work left and no progress this long is announced as stalled.
    #[serde(default, with = "evalctl_common::duration::optional")]
    pub stall_after: Option<Duration>,
    /// This many preemptions within `preemption_window` are a preemption storm.
    pub preemption_storm: Option<u64>,
    /// The window of `preemption_storm`.
    #[serde(default, with = "evalctl_common::duration::optional")]
    pub preemption_window: Option<Duration>,
    /// The sinks.
    #[serde(default)]
    pub sinks: Vec<SinkFile>,
}

/// One `[[notify.sinks]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkFile {
    /// Its name, as schedules name it (`evalctl schedule add --notify NAME`).
    pub name: String,
    /// `webhook`, `slack` or `email`.
    pub kind: String,
    /// Which events it gets (default: all).
    pub events: Option<Vec<String>>,
    /// `all` (every campaign's events; the default) or `schedules` (only the campaigns of
    /// schedules that name it). Agent and preemption events go to `all` sinks.
    pub scope: Option<String>,
    /// Webhook and Slack: where to POST.
    pub url: Option<String>,
    /// Webhook: a file whose contents sign each body (HMAC-SHA256).
    pub secret_file: Option<PathBuf>,
    /// Email: the SMTP server.
    pub smtp_host: Option<String>,
    /// Email: its port (default 587).
    pub smtp_port: Option<u16>,
    /// Email: `required` (the default), `opportunistic` or `none`.
    pub starttls: Option<String>,
    /// Email: user to log in as.
    pub username: Option<String>,
    /// Email: a file holding the password.
    pub password_file: Option<PathBuf>,
    /// Email: the sender.
    pub from: Option<String>,
    /// Email: the recipients.
    pub to: Option<Vec<String>>,
}

/// How an email sink talks to its server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartTls {
    /// STARTTLS or fail.
    Required,
    /// STARTTLS when offered.
    Opportunistic,
    /// Plain text (a relay on loopback).
    None,
}

/// Where a sink sends.
#[derive(Debug, Clone)]
pub enum SinkKind {
    /// JSON POST, signed when a secret is given.
    Webhook {
        /// The URL.
        url: String,
        /// The HMAC-SHA256 key.
        secret: Option<Vec<u8>>,
    },
    /// A Slack-compatible incoming webhook (blocks).
    Slack {
        /// The URL.
        url: String,
    },
    /// Email over SMTP.
    Email {
        /// Server host.
        host: String,
        /// Server port.
        port: u16,
        /// TLS.
        starttls: StartTls,
        /// Login, with the password read from its file.
        credentials: Option<(String, String)>,
        /// Sender.
        from: String,
        /// Recipients.
        to: Vec<String>,
    },
}

/// A checked sink.
#[derive(Debug, Clone)]
pub struct Sink {
    /// Its name.
    pub name: String,
    /// Where it sends.
    pub kind: SinkKind,
    /// The events it gets.
    pub events: Vec<EventKind>,
    /// Every campaign's events, not only those of schedules naming it.
    pub all_campaigns: bool,
}

/// The checked notification settings.
#[derive(Debug, Clone)]
pub struct NotifyConfig {
    /// The sinks.
    pub sinks: Vec<Sink>,
    /// Stall threshold.
    pub stall_after: Duration,
    /// Preemptions that make a storm.
    pub storm_count: u64,
    /// Their window.
    pub storm_window: Duration,
}

impl Default for NotifyConfig {
    fn default() -> NotifyConfig {
        NotifyConfig {
            sinks: Vec::new(),
            stall_after: Duration::from_secs(2 * 3600),
            storm_count: 5,
            storm_window: Duration::from_secs(600),
        }
    }
}

/// A `[notify]` section that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("`notify.sinks` entry `{sink}`: {problem}")]
pub struct NotifyConfigError {
    /// The sink's name (or its position).
    pub sink: String,
    /// What is wrong.
    pub problem: String,
}

impl NotifyFile {
    /// Checks the section and reads the secret and password files.
    pub fn check(self) -> Result<NotifyConfig, NotifyConfigError> {
        let defaults = NotifyConfig::default();
        let mut sinks: Vec<Sink> = Vec::new();
        for (i, file) in self.sinks.into_iter().enumerate() {
            let sink = file.check(i)?;
            if sinks.iter().any(|x| x.name == sink.name) {
                return Err(NotifyConfigError {
                    sink: sink.name,
                    problem: "another sink has this name".into(),
                });
            }
            sinks.push(sink);
        }
        Ok(NotifyConfig {
            sinks,
            stall_after: self.stall_after.unwrap_or(defaults.stall_after),
            storm_count: self.preemption_storm.unwrap_or(defaults.storm_count).max(1),
            storm_window: self.preemption_window.unwrap_or(defaults.storm_window),
        })
    }
}

impl SinkFile {
    /// Checks entry number `i`.
    fn check(self, i: usize) -> Result<Sink, NotifyConfigError> {
        if self.name.trim().is_empty() {
            return Err(NotifyConfigError {
                sink: format!("#{i}"),
                problem: "`name` is empty".into(),
            });
        }
        let err = |problem: String| NotifyConfigError {
            sink: self.name.clone(),
            problem,
        };
        let events = match &self.events {
            None => EventKind::ALL.to_vec(),
            Some(list) => list
                .iter()
                .map(|e| {
                    EventKind::parse(e).ok_or_else(|| {
                        let known: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
                        err(format!(
                            "unknown event `{e}` (expected one of {})",
                            known.join(", ")
                        ))
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let all_campaigns = match self.scope.as_deref() {
            None | Some("all") => true,
            Some("schedules") => false,
            Some(other) => {
                return Err(err(format!(
                    "`scope` is `{other}`; expected `all` or `schedules`"
                )));
            }
        };
        let kind = match self.kind.as_str() {
            "webhook" => SinkKind::Webhook {
                url: self.url()?,
                secret: self
                    .secret_file
                    .as_ref()
                    .map(|p| self.read(p, "secret_file").map(String::into_bytes))
                    .transpose()?,
            },
            "slack" => SinkKind::Slack { url: self.url()? },
            "email" => self.email()?,
            other => {
                return Err(err(format!(
                    "`kind` is `{other}`; expected `webhook`, `slack` or `email`"
                )));
            }
        };
        Ok(Sink {
            name: self.name,
            kind,
            events,
            all_campaigns,
        })
    }

    fn error(&self, problem: String) -> NotifyConfigError {
        NotifyConfigError {
            sink: self.name.clone(),
            problem,
        }
    }

    /// The http(s) URL of a webhook or Slack sink.
    fn url(&self) -> Result<String, NotifyConfigError> {
        let url = self
            .url
            .clone()
            .ok_or_else(|| self.error("`url` is missing".into()))?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(self.error(format!("`url` `{url}` is not an http(s) URL")));
        }
        Ok(url)
    }

    /// A secret file's contents, without the trailing newline.
    fn read(&self, path: &PathBuf, what: &str) -> Result<String, NotifyConfigError> {
        std::fs::read_to_string(path)
            .map(|t| t.trim_end_matches(['\r', '\n']).to_owned())
            .map_err(|e| self.error(format!("cannot read `{what}` {}: {e}", path.display())))
    }

    /// An email sink's server, login and addresses.
    fn email(&self) -> Result<SinkKind, NotifyConfigError> {
        let starttls = match self.starttls.as_deref() {
            None | Some("required") => StartTls::Required,
            Some("opportunistic") => StartTls::Opportunistic,
            Some("none") => StartTls::None,
            Some(other) => {
                return Err(self.error(format!(
                    "`starttls` is `{other}`; expected `required`, `opportunistic` or `none`"
                )));
            }
        };
        let credentials = match (&self.username, &self.password_file) {
            (Some(user), Some(file)) => Some((user.clone(), self.read(file, "password_file")?)),
            (None, None) => None,
            _ => {
                return Err(
                    self.error("give both `username` and `password_file`, or neither".into())
                );
            }
        };
        Ok(SinkKind::Email {
            host: self
                .smtp_host
                .clone()
                .ok_or_else(|| self.error("`smtp_host` is missing".into()))?,
            port: self.smtp_port.unwrap_or(587),
            starttls,
            credentials,
            from: self
                .from
                .clone()
                .ok_or_else(|| self.error("`from` is missing".into()))?,
            to: self
                .to
                .clone()
                .filter(|t| !t.is_empty())
                .ok_or_else(|| self.error("`to` is missing or empty".into()))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NotifyConfig, NotifyConfigError> {
        let file: NotifyFile = toml::from_str(text).unwrap();
        file.check()
    }

    #[test]
    fn sinks_are_checked_and_defaults_filled() {
        let config = parse(
            "stall_after = \"30m\"\n[[sinks]]\nname = \"a\"\nkind = \"slack\"\nurl = \"https://hooks.example/x\"\nevents = [\"regression\"]\n",
        )
        .unwrap();
        assert_eq!(config.stall_after, Duration::from_secs(1800));
        assert_eq!(config.storm_count, 5);
        assert_eq!(config.sinks[0].events, [EventKind::Regression]);
        assert!(config.sinks[0].all_campaigns);
        for (text, want) in [
            (
                "[[sinks]]\nname = \"a\"\nkind = \"pager\"\n",
                "`kind` is `pager`",
            ),
            (
                "[[sinks]]\nname = \"a\"\nkind = \"webhook\"\n",
                "`url` is missing",
            ),
            (
                "[[sinks]]\nname = \"a\"\nkind = \"webhook\"\nurl = \"ftp://x\"\n",
                "not an http(s) URL",
            ),
            (
                "[[sinks]]\nname = \"a\"\nkind = \"slack\"\nurl = \"http://x\"\nevents = [\"boom\"]\n",
                "unknown event `boom`",
            ),
            (
                "[[sinks]]\nname = \"a\"\nkind = \"slack\"\nurl = \"http://x\"\n[[sinks]]\nname = \"a\"\nkind = \"slack\"\nurl = \"http://y\"\n",
                "another sink has this name",
            ),
            (
                "[[sinks]]\nname = \"m\"\nkind = \"email\"\nsmtp_host = \"h\"\nfrom = \"a@b\"\n",
                "`to` is missing",
            ),
            (
                "[[sinks]]\nname = \"m\"\nkind = \"email\"\nsmtp_host = \"h\"\nfrom = \"a@b\"\nto = [\"c@d\"]\nusername = \"u\"\n",
                "both `username` and `password_file`",
            ),
            (
                "[[sinks]]\nname = \"w\"\nkind = \"webhook\"\nurl = \"http://x\"\nsecret_file = \"/nonexistent/secret\"\n",
                "cannot read `secret_file`",
            ),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }
}
