//! Runs the ClientHello fuzzing seed corpus, `fuzz/corpus/client_hello/`, through the parser on
//! stable Rust: no input may panic, `valid-*` files must parse as whole ClientHellos and
//! `invalid-*` ones as invalid, `incomplete-*` ones as incomplete. The `*-fuzz-*` files are
//! inputs the fuzzer found, kept because they reach code the others do not. A `*-retry-*` file
//! is a client's second flight after a HelloRetryRequest, read with
//! `ClientHelloParser::after_retry`.

use std::path::Path;

use reprise_rustls::client_hello::{parse, ClientHelloParser, Parsed, MAX_BUFFERED};

#[test]
fn the_seed_corpus_parses_as_its_names_say() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/client_hello");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    let (mut valid, mut invalid) = (0, 0);
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(path).unwrap();
        let retry = name.contains("-retry-");
        let fresh = || {
            if retry {
                ClientHelloParser::after_retry()
            } else {
                ClientHelloParser::new()
            }
        };
        let parsed = fresh().parse(&bytes);
        if !retry {
            assert_eq!(parse(&bytes), parsed, "{name}");
        }

        // The incremental parser, fed ten bytes at a time, agrees.
        let mut parser = fresh();
        let mut last = parser.parse(&[]);
        for end in (10..bytes.len()).step_by(10).chain([bytes.len()]) {
            last = parser.parse(&bytes[..end]);
        }
        assert_eq!(last, parsed, "{name}");

        match &parsed {
            Parsed::Complete(info) => {
                assert!(info.session_id.len() <= 32, "{name}");
                assert!(
                    info.psk_identities.iter().all(|id| !id.is_empty()),
                    "{name}"
                );
            }
            Parsed::Incomplete => assert!(bytes.len() < MAX_BUFFERED, "{name}"),
            Parsed::Invalid(_) => {}
        }
        if name.starts_with("valid-") {
            let Parsed::Complete(info) = &parsed else {
                panic!("{name}: expected a complete ClientHello, got {parsed:?}");
            };
            if name.contains("tls13-resume") {
                assert!(!info.psk_identities.is_empty(), "{name}: no PSK identity");
                assert!(info.supports_tls13, "{name}");
            }
            if name.contains("tls12-resume") {
                assert!(!info.session_id.is_empty(), "{name}: no session id");
            }
            valid += 1;
        } else if name.starts_with("invalid-") {
            assert!(
                matches!(parsed, Parsed::Invalid(_)),
                "{name}: expected an invalid ClientHello, got {parsed:?}"
            );
            invalid += 1;
        } else if name.starts_with("incomplete-") {
            assert_eq!(parsed, Parsed::Incomplete, "{name}");
        }
    }
    assert!(
        valid >= 10,
        "only {valid} valid-* files in {}",
        dir.display()
    );
    assert!(
        invalid >= 10,
        "only {invalid} invalid-* files in {}",
        dir.display()
    );
    println!("{} files: {valid} valid, {invalid} invalid", files.len());
}
