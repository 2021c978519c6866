//! Fuzzes the ClientHello parser: any input, whole or in pieces, as a first flight or as the
//! second one after a HelloRetryRequest; and against rustls: a first flight a rustls server
//! accepts (it answers, with no alert) must be a whole ClientHello to the parser.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use reprise_rustls::client_hello::{
    parse, ClientHelloParser, Parsed, MAX_BUFFERED, MAX_FIRST_FLIGHT,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, ServerConnection};

/// A rustls server for localhost, TLS 1.2 and 1.3, made once.
fn server() -> Arc<ServerConfig> {
    static CONFIG: OnceLock<Arc<ServerConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let key = rcgen::KeyPair::generate().expect("a key");
            let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
                .expect("params")
                .self_signed(&key)
                .expect("a certificate");
            let config = ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_protocol_versions(rustls::ALL_VERSIONS)
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .expect("a config");
            Arc::new(config)
        })
        .clone()
}

/// Whether a fresh rustls server answers `flight` without an alert.
fn rustls_accepts(flight: &[u8]) -> bool {
    let Ok(mut conn) = ServerConnection::new(server()) else {
        return false;
    };
    let mut rd = flight;
    while !rd.is_empty() {
        match conn.read_tls(&mut rd) {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
        if conn.process_new_packets().is_err() {
            return false;
        }
    }
    conn.wants_write() && conn.is_handshaking()
}

fuzz_target!(|data: &[u8]| {
    let whole = parse(data);
    match &whole {
        Parsed::Complete(info) => {
            assert!(info.session_id.len() <= 32);
            assert!(info.psk_identities.iter().all(|id| !id.is_empty()));
            if let Some(name) = &info.server_name {
                assert!(!name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic()));
            }
        }
        Parsed::Incomplete => assert!(data.len() < MAX_BUFFERED),
        Parsed::Invalid(why) => assert!(!why.is_empty()),
    }

    // Whatever rustls accepts, the parser reads.
    if data.len() <= MAX_FIRST_FLIGHT && rustls_accepts(data) {
        assert!(
            matches!(whole, Parsed::Complete(_)),
            "rustls accepts this flight, the parser says {whole:?}"
        );
    }

    // The incremental parser, fed in pieces whose size the last byte picks, agrees; and once it
    // has decided, it does not change its mind.
    let step = usize::from(data.last().copied().unwrap_or(0) % 61) + 1;
    let mut parser = ClientHelloParser::new();
    let mut last = parser.parse(&[]);
    let mut end = 0;
    while end < data.len() {
        end = (end + step).min(data.len());
        let now = parser.parse(&data[..end]);
        if last != Parsed::Incomplete {
            assert_eq!(now, last);
        }
        last = now;
    }
    assert_eq!(last, whole);

    // A prefix is undecided, or decided the same way.
    let cut = data.len() / 2;
    let early = parse(&data[..cut]);
    assert!(early == Parsed::Incomplete || early == whole);

    // As a second flight: without a leading change_cipher_spec record (or an alert, which only
    // a first flight may start with) it reads the same; with one, it reads what follows it.
    let retry = ClientHelloParser::after_retry().parse(data);
    if !matches!(data.first(), Some(&20) | Some(&21)) {
        assert_eq!(retry, whole);
    } else if data.len() >= 6 && data[1] == 3 && data[3..6] == [0, 1, 1] {
        if let Parsed::Complete(_) = &retry {
            assert!(matches!(parse(&data[6..]), Parsed::Complete(_)));
        }
    }
});
