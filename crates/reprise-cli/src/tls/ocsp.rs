//! OCSP responses to staple: read from a DER file, checked against the certificate they are for
//! (serial and issuer), and dated, so that an expired one is no longer stapled.

use std::path::Path;

use anyhow::bail;
use openssl::hash::MessageDigest;
use openssl::ocsp::{OcspCertId, OcspCertStatus, OcspResponse, OcspResponseStatus};
use openssl::x509::X509;
use rustls::pki_types::CertificateDer;

/// A checked OCSP response for one certificate.
#[derive(Clone, Debug)]
pub struct Staple {
    /// The response, as read (DER), stapled as is.
    pub der: Vec<u8>,
    /// Its `nextUpdate`, in seconds since the Unix epoch; None if it has none (RFC 6960: newer
    /// information is always available), and then it never expires.
    pub next_update: Option<i64>,
}

impl Staple {
    /// Reads the DER response in `path` and checks it is a successful response for the leaf of
    /// `chain`, whose issuer must follow it in the chain, and that it says "good".
    pub fn load(path: &Path, chain: &[CertificateDer<'_>]) -> anyhow::Result<Staple> {
        let shown = path.display();
        let der = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("cannot read OCSP file {shown}: {e}"))?;
        let (Some(leaf), Some(issuer)) = (chain.first(), chain.get(1)) else {
            bail!("OCSP file {shown}: the certificate file must hold the issuer's certificate after the leaf, to check the response against");
        };
        let leaf = X509::from_der(leaf)
            .map_err(|_| anyhow::anyhow!("OCSP file {shown}: cannot read the certificate"))?;
        let issuer = X509::from_der(issuer).map_err(|_| {
            anyhow::anyhow!("OCSP file {shown}: cannot read the issuer's certificate")
        })?;
        let response = OcspResponse::from_der(&der)
            .map_err(|_| anyhow::anyhow!("OCSP file {shown}: not a DER OCSP response"))?;
        if response.status() != OcspResponseStatus::SUCCESSFUL {
            bail!(
                "OCSP file {shown}: the responder did not answer successfully (status {})",
                response.status().as_raw()
            );
        }
        let basic = response
            .basic()
            .map_err(|_| anyhow::anyhow!("OCSP file {shown}: not a basic OCSP response"))?;
        // Responders name the certificate with SHA-1 hashes, some with SHA-256.
        let mut found = None;
        for digest in [MessageDigest::sha1(), MessageDigest::sha256()] {
            let id = OcspCertId::from_cert(digest, &leaf, &issuer)
                .map_err(|_| anyhow::anyhow!("OCSP file {shown}: cannot name the certificate"))?;
            if let Some(status) = basic.find_status(&id) {
                let next = match status.next_update() {
                    Some(t) => Some(unix_time(&t.to_string()).ok_or_else(|| {
                        anyhow::anyhow!("OCSP file {shown}: cannot read its nextUpdate ({t})")
                    })?),
                    None => None,
                };
                found = Some((status.status, next));
                break;
            }
        }
        let Some((status, next_update)) = found else {
            bail!("OCSP file {shown}: the response is not for this certificate (serial and issuer differ)");
        };
        if status == OcspCertStatus::REVOKED {
            bail!("OCSP file {shown}: the response says the certificate is revoked");
        }
        if status != OcspCertStatus::GOOD {
            bail!("OCSP file {shown}: the response does not say the certificate is good");
        }
        Ok(Staple { der, next_update })
    }

    /// Whether the response is expired at `now` (seconds since the Unix epoch): from its
    /// `nextUpdate` on.
    pub fn expired_at(&self, now: i64) -> bool {
        self.next_update.is_some_and(|next| now >= next)
    }
}

/// Seconds since the Unix epoch, now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Reads a time as OpenSSL prints an ASN.1 time, `Dec  3 14:40:00 2026 GMT` (the seconds may
/// carry a fraction, ignored), into seconds since the Unix epoch.
fn unix_time(text: &str) -> Option<i64> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let mut parts = text.split_whitespace();
    let month = parts.next()?;
    let month = i64::try_from(MONTHS.iter().position(|m| *m == month)?).ok()? + 1;
    let day: i64 = parts.next()?.parse().ok()?;
    let clock = parts.next()?;
    let year: i64 = parts.next()?.parse().ok()?;
    if parts.next() != Some("GMT") || parts.next().is_some() {
        return None;
    }
    let clock = clock.split('.').next()?;
    let mut hms = clock.split(':').map(|v| v.parse::<i64>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    if hms.next().is_some() || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    // Days from 1970-01-01 to the date, in the proleptic Gregorian calendar.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + m * 60 + s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_openssl_printed_times() {
        assert_eq!(unix_time("Jan  1 00:00:00 1970 GMT"), Some(0));
        assert_eq!(unix_time("Dec 31 23:59:59 9999 GMT"), Some(253_402_300_799));
        assert_eq!(unix_time("Feb 29 12:30:05 2024 GMT"), Some(1_709_209_805));
        assert_eq!(unix_time("Mar  1 00:00:00.25 2000 GMT"), Some(951_868_800));
        for bad in [
            "",
            "Foo 1 00:00:00 2000 GMT",
            "Jan 1 00:00 2000 GMT",
            "Jan 1 00:00:00 2000",
        ] {
            assert_eq!(unix_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn expires_at_next_update() {
        let staple = Staple {
            der: Vec::new(),
            next_update: Some(100),
        };
        assert!(!staple.expired_at(99));
        assert!(staple.expired_at(100));
        let forever = Staple {
            der: Vec::new(),
            next_update: None,
        };
        assert!(!forever.expired_at(i64::MAX));
    }
}
