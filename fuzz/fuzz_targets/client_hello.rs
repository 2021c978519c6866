//! Fuzzes the ClientHello parser: any input, whole or in pieces.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reprise_rustls::client_hello::{parse, ClientHelloParser, Parsed, MAX_BUFFERED};

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
});
