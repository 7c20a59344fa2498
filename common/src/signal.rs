//! Process signals that ask for a graceful shutdown, for every evalctl binary.

use std::future::Future;

use tokio::signal::unix::{Signal, SignalKind, signal};

/// Registers SIGINT and SIGTERM handlers now and returns a future that completes on the
/// first of them.
///
/// Registration happens at call time, not at first poll, so a caller that registers
/// before announcing its address (as the binaries do) never dies of an early SIGTERM.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    let term = register(SignalKind::terminate(), "SIGTERM");
    let int = register(SignalKind::interrupt(), "SIGINT");
    async move {
        tokio::select! {
            _ = recv(int) => tracing::info!("received SIGINT"),
            _ = recv(term) => tracing::info!("received SIGTERM"),
        }
    }
}

fn register(kind: SignalKind, name: &str) -> Option<Signal> {
    match signal(kind) {
        Ok(s) => Some(s),
        Err(err) => {
            tracing::warn!(error = %err, signal = name, "cannot listen for the signal");
            None
        }
    }
}

async fn recv(signal: Option<Signal>) {
    match signal {
        Some(mut s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_signal_sent_right_after_registration_is_caught() {
        let shutdown = shutdown_signal();
        nix_free_raise_sigterm();
        tokio::time::timeout(std::time::Duration::from_secs(5), shutdown)
            .await
            .expect("SIGTERM delivered before the first poll completes the future");
    }

    /// Sends SIGTERM to this process through `kill(1)`, keeping the crate free of unsafe
    /// code and of a signal-sending dependency.
    fn nix_free_raise_sigterm() {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }
}
