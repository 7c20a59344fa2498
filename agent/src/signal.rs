//! Process signals that ask for a graceful shutdown. (The coordinator has the same small
//! helper: the two crates meet only on the wire and share no library code.)

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
