//! `reprise check-config`: the settings of `reprise serve` resolved and every file they name
//! loaded as `serve` loads it, without listening, connecting to Redis or opening the disk
//! tier's database; "config ok" on success, one line naming the problem (exit 2) otherwise.

use std::net::ToSocketAddrs;

use anyhow::{bail, Context};
use reprise_seal::KeyRing;

use crate::cli::ServeArgs;
use crate::config::{Settings, TicketKeysFrom};
use crate::{startup, tls};

/// Checks the settings and their files; prints "config ok".
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let settings = Settings::resolve(args).map_err(startup)?;
    check(&settings).map_err(startup)?;
    println!("config ok");
    Ok(())
}

/// Everything `serve` would refuse at start, short of binding its addresses.
pub fn check(settings: &Settings) -> anyhow::Result<()> {
    // The tiers are checked through their files only: Redis need not be reachable, and the
    // disk tier's database belongs to the running server (opening it would change it).
    let mut offline = settings.clone();
    if let Some(redis) = offline.redis.take() {
        KeyRing::load(&redis.key_file).map_err(|e| anyhow::Error::new(e).context("key-file"))?;
    }
    if let Some(disk) = offline.disk.take() {
        if let Some(path) = &disk.key_file {
            KeyRing::load(path).map_err(|e| anyhow::Error::new(e).context("key-file"))?;
        }
        let dir = &disk.dir;
        match std::fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => bail!("cache-dir {}: not a directory", dir.display()),
            // `serve` creates a missing directory, in a parent that must exist.
            Err(_) => {
                let parent = dir
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(std::path::Path::new("."));
                if !parent.is_dir() {
                    bail!(
                        "cache-dir {}: neither it nor its parent directory exists",
                        dir.display()
                    );
                }
            }
        }
    }
    if offline.ticket_keys == Some(TicketKeysFrom::Redis) {
        // The fleet's ring is sealed with the key file, checked above.
        offline.ticket_keys = Some(TicketKeysFrom::Local);
    }
    // Certificates, keys, client CAs, ticket-key file: as `serve` builds them.
    tls::build(&offline)?;
    for addr in settings.listen.iter().chain(settings.metrics_listen.iter()) {
        let mut resolved = addr
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve listen address {addr:?}"))?;
        if resolved.next().is_none() {
            bail!("listen address {addr:?} resolves to nothing");
        }
    }
    if let Some(upstream) = &settings.upstream {
        crate::serve::check_host_port(upstream)?;
    }
    if let Some(path) = &settings.pid_file {
        // Written by `serve` into its directory, which must exist.
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        if !dir.is_dir() {
            bail!("pid-file {}: its directory does not exist", path.display());
        }
    }
    if let Some(log) = &settings.access_log {
        if let crate::access_log::Target::File(path) = &log.target {
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(path)
                .with_context(|| format!("access-log {}: cannot open", path.display()))?;
        }
    }
    Ok(())
}
