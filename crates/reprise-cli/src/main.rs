//! `reprise`: a TLS terminator whose sessions resume through the Reprise cache (`serve`, and
//! `reload` to make it reload), and a handshake load generator (`bench`).

mod access_log;
mod admission;
mod bench;
mod check_config;
mod cli;
mod client_conn;
mod config;
mod early;
mod http;
mod metrics;
mod notify;
mod pidfile;
mod proxy;
mod serve;
mod tls;

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;

use crate::cli::{Cli, Command};

/// An error found before the work starts: a bad flag, config value, certificate, key or
/// address. It is reported as one line, with exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct StartupError(pub anyhow::Error);

/// Wraps an error as a [`StartupError`].
pub fn startup(e: impl Into<anyhow::Error>) -> anyhow::Error {
    anyhow::Error::new(StartupError(e.into()))
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    init_tracing();
    // The process's default provider, for what builds its own rustls configuration (redis-rs
    // for `rediss://`): with both providers compiled in, rustls would not pick one by itself.
    let _ = tls::provider().install_default();
    let workers = match &cli.command {
        // `serve` starts its own workers (see `serve::start_workers`); this thread's runtime
        // runs the signals, the metrics, the tiers' tasks, and with one worker everything.
        Command::Serve(_) => Some(1),
        Command::Bench(args) => args.workers,
        Command::Keygen(_) | Command::CheckConfig(_) | Command::Reload(_) => Some(1),
    };
    // One worker runs everything on this thread: no cross-thread wake-ups at all.
    let mut runtime = match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n.max(1));
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    runtime.enable_all();
    let result = runtime.build().map_err(anyhow::Error::from).and_then(|rt| {
        rt.block_on(async {
            match cli.command {
                Command::Serve(args) => serve::run(*args).await,
                Command::Bench(args) => bench::run(args).await,
                Command::Keygen(args) => keygen(args),
                Command::CheckConfig(args) => check_config::run(*args),
                Command::Reload(args) => pidfile::reload(&args.pid_file),
            }
        })
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = if e.downcast_ref::<StartupError>().is_some() {
                2
            } else {
                1
            };
            // One line: the chain of causes, joined.
            let line = format!("{e:#}").replace('\n', " ");
            eprintln!("reprise: error: {line}");
            ExitCode::from(code)
        }
    }
}

/// Prints a new key-file line.
fn keygen(args: cli::KeygenArgs) -> anyhow::Result<()> {
    let name = args.name.unwrap_or_else(|| {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        format!("key-{secs}")
    });
    let line = reprise_seal::KeyRing::generate_line(&name).map_err(startup)?;
    // Written as bytes: no formatting copies of the key.
    let mut out = std::io::stdout().lock();
    out.write_all(line.as_bytes())
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
        .map_err(|e| anyhow::anyhow!("cannot write the key line: {e}"))?;
    Ok(())
}

/// Help and version go to stdout as usual; a usage error is one line on stderr, exit 2.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return if e.use_stderr() {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        };
    }
    let text = e.render().to_string();
    let first = text.lines().next().unwrap_or("invalid arguments");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    eprintln!("reprise: error: {first} (see reprise --help)");
    ExitCode::from(2)
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
