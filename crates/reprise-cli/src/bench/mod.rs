//! `reprise bench`: a handshake load generator on a rustls client.
//!
//! `--concurrency` worker tasks each loop over one connection at a time: TCP connect, TLS
//! handshake, then a clean close. The close sends close_notify (in the same write as the
//! client's last handshake flight when it has one left: see [`crate::client_conn`]) and reads
//! until the server's
//! close_notify, so that TLS 1.3 tickets (which the server sends after the handshake) reach the
//! client's session store, and then waits for the server's TCP FIN so that the server, not the
//! load generator, is the side left in TIME_WAIT (a client-side TIME_WAIT per connection would
//! run out of ephemeral ports at a few hundred connections per second against a remote server).
//! With `--abrupt FRACTION`, that share of the connections (spread evenly over each worker's)
//! ends instead with a bare TCP close right after the handshake, without close_notify, as many
//! real clients end theirs; the client then closes first and keeps the TIME_WAIT state (on
//! loopback, Linux reuses those ports: `net.ipv4.tcp_tw_reuse`).
//!
//! Latency is measured from the start of the TCP connect to the completion of the handshake as
//! the client sees it: when it has verified the server's Finished. Each worker records it in an HdrHistogram (microseconds, three
//! significant digits), merged at the end: memory stays fixed however long the run.
//!
//! In `--mode full` every worker shares one client configuration with resumption disabled. In
//! `--mode resume` every worker has its own configuration and in-memory session store, so it
//! resumes its own sessions: TLS 1.2 by session id (or ticket, if the server issues them),
//! TLS 1.3 by ticket. Each worker's first handshake is therefore full.
//!
//! The command is four parts: [`plan`] turns the flags into what to run, [`trust`] decides what
//! the client trusts, [`run`](mod@run) drives the handshakes, and [`report`] turns the tallies into
//! figures and prints them.

mod plan;
mod report;
mod request;
mod run;
mod trust;

use anyhow::{bail, Context};

use crate::cli::BenchArgs;
use crate::startup;

use plan::Plan;
use report::{reasons_line, Report};

/// Runs the load generator and prints its report.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let plan = Plan::from_args(&args).await.map_err(startup)?;
    let outcome = run::execute(&plan).await?;
    let report = Report::new(&plan, &outcome);
    if plan.json {
        let text = serde_json::to_string(&report).context("encoding the report")?;
        println!("{text}");
    } else {
        print!("{}", report.human());
    }
    if report.handshakes == 0 {
        if report.failures > 0 {
            bail!(
                "all {} attempts failed: {}",
                report.failures,
                reasons_line(&report.failure_reasons)
            );
        }
        bail!("no handshake completed in {:.3} s", report.elapsed_secs);
    }
    Ok(())
}
