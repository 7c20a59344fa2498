//! Tracing setup shared by the coordinator binary and in-process users.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs a global subscriber writing to stderr; `RUST_LOG` overrides the `info` default.
/// Calling it twice is harmless (the second call does nothing).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
