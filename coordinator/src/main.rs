//! `evalctl-coordinator`: parses flags, starts tracing, binds, and serves until SIGINT/SIGTERM;
//! or runs an administration subcommand (`gen-certs`, `token`) and exits.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use evalctl_common::signal;
use evalctl_coordinator::args::{AdminCommand, Args, GenCertsArgs, TokenCommand};
use evalctl_coordinator::auth::token;
use evalctl_coordinator::config::Config;
use evalctl_coordinator::server::Coordinator;
use evalctl_coordinator::store::{Store, TokenRow};
use evalctl_coordinator::tls::certs::{self, CertsRequest};
use evalctl_coordinator::{limits, logging};

/// mimalloc instead of glibc's allocator: with 10,000 agents connected it cut the
/// coordinator's CPU per lease grant by about a quarter (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let (config, log_format) = args.resolve()?;
    logging::init(log_format);
    match args.command {
        None => serve(config).await,
        Some(AdminCommand::GenCerts(gen_certs)) => generate_certs(&gen_certs),
        Some(AdminCommand::Token(command)) => tokens(&config, command).await,
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    if config.tls.is_none() && !config.listen.ip().is_loopback() {
        eprintln!(
            "warning: --insecure: serving plain text on {}; traffic and tokens are readable \
             on the network",
            config.listen
        );
    }
    // Handlers first: a SIGTERM that arrives once the address is out must be graceful.
    let shutdown = signal::shutdown_signal();
    let coordinator = Coordinator::bind(config).await?;
    // The first stdout line is machine-readable so scripts and tests can use port 0.
    println!("listening on {}", coordinator.local_addr());
    if let Some(addr) = coordinator.metrics_addr() {
        println!("metrics on http://{addr}/metrics");
    }
    coordinator.serve(shutdown).await?;
    Ok(())
}

fn generate_certs(args: &GenCertsArgs) -> anyhow::Result<()> {
    let written = certs::generate(
        &args.out,
        &CertsRequest {
            hosts: args.hosts.clone(),
            agents: args.agents.clone(),
            days: args.days,
            force: args.force,
        },
    )?;
    for path in written {
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// Who acts when an administrator works on the database file directly.
fn local_actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".to_owned());
    format!("local:{user}")
}

async fn tokens(config: &Config, command: TokenCommand) -> anyhow::Result<()> {
    let store = Store::open(&config.database)
        .await
        .with_context(|| format!("failed to open database `{}`", config.database.display()))?;
    match command {
        TokenCommand::Create {
            name,
            role,
            secret_file,
        } => {
            if let Err(status) = limits::token_name(&name) {
                anyhow::bail!("{}", status.message());
            }
            let secret = token::generate();
            let row = store
                .create_token(&secret.token_id, &name, role, secret.hash, &local_actor())
                .await?;
            match secret_file {
                Some(path) => {
                    write_secret(&path, &secret.secret)?;
                    eprintln!(
                        "created token {} ({}, role {}); secret written to {}",
                        row.token_id,
                        row.name,
                        row.role,
                        path.display()
                    );
                }
                None => {
                    eprintln!(
                        "created token {} ({}, role {}); its secret is shown once:",
                        row.token_id, row.name, row.role
                    );
                    println!("{}", secret.secret);
                }
            }
        }
        TokenCommand::List => {
            for row in store.list_tokens().await? {
                println!("{}", describe(&row));
            }
        }
        TokenCommand::Revoke { token } => match store.revoke_token(&token, &local_actor()).await? {
            Some(row) => println!("revoked {}", describe(&row)),
            None => anyhow::bail!("no token with id or live name `{token}`"),
        },
    }
    Ok(())
}

fn describe(row: &TokenRow) -> String {
    let state = match row.revoked_ms {
        Some(_) => format!(
            "revoked by {}",
            row.revoked_by.as_deref().unwrap_or("unknown")
        ),
        None => "live".to_owned(),
    };
    let last_used = row.last_used_ms.map_or_else(
        || "never used".to_owned(),
        |ms| {
            let at = std::time::UNIX_EPOCH
                + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
            format!("last used {}", humantime::format_rfc3339_seconds(at))
        },
    );
    format!(
        "{}\t{}\t{}\tcreated by {}\t{}\t{}",
        row.token_id, row.name, row.role, row.created_by, last_used, state
    )
}

fn write_secret(path: &std::path::Path, secret: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("failed to create `{}`", path.display()))?;
    writeln!(file, "{secret}").with_context(|| format!("failed to write `{}`", path.display()))?;
    Ok(())
}
