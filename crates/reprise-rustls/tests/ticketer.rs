//! The ticketer in real rustls handshakes (in memory): instances sharing a key file resume each
//! other's stateless tickets in TLS 1.2 and TLS 1.3; another context, replaced keys and an
//! expired ticket make a full handshake, counted by reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use reprise::ManualClock;
use reprise_rustls::tickets::{
    TicketCounters, TicketKeyFile, TicketKeySource, TicketSealer, TicketStats,
};
use reprise_rustls::{derive_sid_ctx, ClientAuth, Ticketer};
use reprise_testkit::{Pki, Version, VERSIONS};
use rustls::crypto::ring as provider;
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{
    ClientConfig, ClientConnection, ConnectionCommon, HandshakeKind, ServerConfig, ServerConnection,
};

const LIFETIME: Duration = Duration::from_secs(3600);

fn key_line(name: &str, byte: u8) -> String {
    format!("{name}:{}\n", format!("{byte:02x}").repeat(32))
}

/// One server instance: a config whose only resumption is the ticketer's.
struct Instance {
    config: Arc<ServerConfig>,
    counters: Arc<TicketCounters>,
}

impl Instance {
    fn new(pki: &Pki, version: Version, source: Arc<dyn TicketKeySource>) -> Self {
        Self::build(pki, version, ClientAuth::None, |sid_ctx, counters| {
            Ticketer::new(source, sid_ctx, counters)
        })
    }

    /// An instance whose ticketer `make` builds from the context and the counters.
    fn build(
        pki: &Pki,
        version: Version,
        client_auth: ClientAuth,
        make: impl FnOnce(&[u8], Arc<TicketCounters>) -> Arc<Ticketer>,
    ) -> Self {
        let builder = ServerConfig::builder_with_provider(Arc::new(provider::default_provider()))
            .with_protocol_versions(&[version.rustls()])
            .unwrap();
        let builder = match client_auth {
            ClientAuth::None => builder.with_no_client_auth(),
            _ => builder.with_client_cert_verifier(
                WebPkiClientVerifier::builder_with_provider(
                    pki.roots(),
                    Arc::new(rustls::crypto::ring::default_provider()),
                )
                .allow_unauthenticated()
                .build()
                .unwrap(),
            ),
        };
        let mut config = builder
            .with_single_cert(pki.server_chain(), pki.server_key())
            .unwrap();
        let sid_ctx = derive_sid_ctx(&pki.server_chain(), client_auth, b"");
        let counters = Arc::new(TicketCounters::default());
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.ticketer = make(sid_ctx.as_bytes(), counters.clone());
        config.send_tls13_tickets = 1;
        Self {
            config: Arc::new(config),
            counters,
        }
    }

    fn stats(&self) -> TicketStats {
        self.counters.snapshot()
    }
}

fn client_config(pki: &Pki, version: Version) -> Arc<ClientConfig> {
    let config = ClientConfig::builder_with_provider(Arc::new(provider::default_provider()))
        .with_protocol_versions(&[version.rustls()])
        .unwrap()
        .with_root_certificates(pki.roots())
        .with_no_client_auth();
    Arc::new(config)
}

/// Moves the records `from` has to send into `to`; whether there were any.
fn transfer<A, B>(from: &mut ConnectionCommon<A>, to: &mut ConnectionCommon<B>) -> bool {
    !reprise_testkit::transfer(from, to).is_empty()
}

/// One connection from `client` to `server`, run until quiet (the TLS 1.3 tickets included);
/// the kind of handshake the server made.
fn connect(client: &Arc<ClientConfig>, server: &Instance) -> HandshakeKind {
    let name = "localhost".try_into().unwrap();
    let mut c = ClientConnection::new(client.clone(), name).unwrap();
    let mut s = ServerConnection::new(server.config.clone()).unwrap();
    for _ in 0..32 {
        let to_server = transfer(&mut c, &mut s);
        s.process_new_packets().unwrap();
        let to_client = transfer(&mut s, &mut c);
        c.process_new_packets().unwrap();
        if !to_server && !to_client && !c.is_handshaking() && !s.is_handshaking() {
            return s.handshake_kind().unwrap();
        }
    }
    panic!("the handshake did not finish in 32 round trips");
}

fn write_keys(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn instances_sharing_a_key_file_resume_each_others_tickets() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ticket.keys");
    write_keys(
        &path,
        &format!("{}{}", key_line("k2", 2), key_line("k1", 1)),
    );
    for version in VERSIONS {
        // Two processes: each reads the file itself.
        let a = Instance::new(&pki, version, TicketKeyFile::open(&path, LIFETIME).unwrap());
        let b = Instance::new(&pki, version, TicketKeyFile::open(&path, LIFETIME).unwrap());
        let client = client_config(&pki, version);
        assert_eq!(connect(&client, &a), HandshakeKind::Full, "{version:?}");
        assert_eq!(
            connect(&client, &b),
            HandshakeKind::Resumed,
            "{version:?} a -> b"
        );
        assert_eq!(
            connect(&client, &a),
            HandshakeKind::Resumed,
            "{version:?} b -> a"
        );
        let (sa, sb) = (a.stats(), b.stats());
        assert!(
            sa.issued >= 1 && sb.issued >= 1,
            "{version:?} {sa:?} {sb:?}"
        );
        assert!(
            sa.decrypted >= 1 && sb.decrypted >= 1,
            "{version:?} {sa:?} {sb:?}"
        );
        let rejected = |s: TicketStats| {
            s.rejected_unknown_key
                + s.rejected_wrong_context
                + s.rejected_expired
                + s.rejected_malformed
        };
        assert_eq!(rejected(sa) + rejected(sb), 0, "{version:?}");
    }
}

#[test]
fn a_ticket_from_another_context_makes_a_full_handshake() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ticket.keys");
    write_keys(&path, &key_line("k1", 1));
    let source = TicketKeyFile::open(&path, LIFETIME).unwrap();
    for version in VERSIONS {
        let plain = Instance::new(&pki, version, source.clone());
        // The same certificate and the same keys, with client authentication (optional here,
        // so that the client can connect without a certificate): another context.
        let mtls = Instance::build(&pki, version, ClientAuth::Optional, |sid_ctx, counters| {
            Ticketer::new(source.clone(), sid_ctx, counters)
        });
        let client = client_config(&pki, version);
        assert_eq!(connect(&client, &plain), HandshakeKind::Full);
        assert_eq!(connect(&client, &mtls), HandshakeKind::Full, "{version:?}");
        let s = mtls.stats();
        assert_eq!(s.rejected_wrong_context, 1, "{version:?} {s:?}");
        assert_eq!(s.decrypted, 0, "{version:?}");
        // Each resumes its own.
        assert_eq!(
            connect(&client, &mtls),
            HandshakeKind::Resumed,
            "{version:?}"
        );
    }
}

#[test]
fn replaced_keys_end_the_old_tickets() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ticket.keys");
    for version in VERSIONS {
        write_keys(&path, &key_line("old", 1));
        let source = TicketKeyFile::open(&path, LIFETIME).unwrap();
        let server = Instance::new(&pki, version, source.clone());
        let client = client_config(&pki, version);
        assert_eq!(connect(&client, &server), HandshakeKind::Full);
        // A new first key, the old one kept: old tickets still resume.
        write_keys(
            &path,
            &format!("{}{}", key_line("new", 2), key_line("old", 1)),
        );
        source.reload().unwrap();
        assert_eq!(
            connect(&client, &server),
            HandshakeKind::Resumed,
            "{version:?}"
        );
        // Every key replaced: nothing issued before resumes.
        let other = Instance::new(&pki, version, source.clone());
        let before = client_config(&pki, version);
        assert_eq!(connect(&before, &other), HandshakeKind::Full);
        write_keys(&path, &key_line("other", 3));
        source.reload().unwrap();
        assert_eq!(connect(&before, &other), HandshakeKind::Full, "{version:?}");
        assert_eq!(other.stats().rejected_unknown_key, 1, "{version:?}");
        assert_eq!(
            connect(&before, &other),
            HandshakeKind::Resumed,
            "{version:?}"
        );
    }
}

#[test]
fn an_expired_ticket_makes_a_full_handshake() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ticket.keys");
    write_keys(&path, &key_line("k1", 1));
    let source = TicketKeyFile::open(&path, Duration::from_secs(60)).unwrap();
    for version in VERSIONS {
        let clock = Arc::new(ManualClock::new(1_800_000_000));
        let server = Instance::build(&pki, version, ClientAuth::None, |sid_ctx, counters| {
            Ticketer::from_sealer(
                TicketSealer::new(source.clone(), sid_ctx, counters).with_clock(clock.clone()),
            )
        });
        let client = client_config(&pki, version);
        assert_eq!(connect(&client, &server), HandshakeKind::Full);
        clock.advance(59);
        assert_eq!(
            connect(&client, &server),
            HandshakeKind::Resumed,
            "{version:?}"
        );
        // The client holds a ticket issued at 59 s (and, in TLS 1.3, none older).
        clock.advance(60);
        assert_eq!(
            connect(&client, &server),
            HandshakeKind::Full,
            "{version:?}"
        );
        assert_eq!(server.stats().rejected_expired, 1, "{version:?}");
    }
}
