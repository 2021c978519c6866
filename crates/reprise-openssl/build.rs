//! Tells the crate whether it is built against OpenSSL 3 or newer, where the ticket-key
//! callback with an `EVP_MAC_CTX` exists (`SSL_CTX_set_tlsext_ticket_key_evp_cb`).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(reprise_ossl3)");
    println!("cargo::rerun-if-env-changed=DEP_OPENSSL_VERSION_NUMBER");
    // `openssl-sys` reports the OpenSSL version it found to crates that depend on it directly,
    // as hex (0xMNN00PP0L). LibreSSL, BoringSSL and AWS-LC report no such number.
    let ossl3 = std::env::var("DEP_OPENSSL_VERSION_NUMBER")
        .ok()
        .and_then(|v| u64::from_str_radix(&v, 16).ok())
        .is_some_and(|v| v >= 0x3000_0000);
    if ossl3 {
        println!("cargo::rustc-cfg=reprise_ossl3");
    }
}
