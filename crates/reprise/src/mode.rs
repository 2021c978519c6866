//! Cache modes: which roles cache sessions, and the modifiers of `SSL_CTX_set_session_cache_mode`.

use core::fmt;
use core::str::FromStr;

use crate::error::ParseModeError;

bitflags::bitflags! {
    /// The session cache mode: OpenSSL's `SSL_SESS_CACHE_*` flags, with the same values.
    ///
    /// The default is [`CacheMode::SERVER`].
    ///
    /// ```
    /// use reprise::CacheMode;
    /// let mode: CacheMode = "server,no-internal".parse().unwrap();
    /// assert_eq!(mode, CacheMode::SERVER | CacheMode::NO_INTERNAL);
    /// assert_eq!(mode.to_string(), "server,no-internal");
    /// assert!("sever".parse::<CacheMode>().is_err());
    /// ```
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct CacheMode: u32 {
        /// Client sessions are added to the cache.
        const CLIENT = 0x0001;
        /// Server sessions are added to the cache, and looked up when a client proposes one.
        const SERVER = 0x0002;
        /// Both [`CLIENT`](Self::CLIENT) and [`SERVER`](Self::SERVER).
        const BOTH = Self::CLIENT.bits() | Self::SERVER.bits();
        /// No automatic flush of expired sessions every 255 completed handshakes.
        const NO_AUTO_CLEAR = 0x0080;
        /// A server does not look sessions up in the internal cache (only through the get callback).
        const NO_INTERNAL_LOOKUP = 0x0100;
        /// New sessions, and sessions the get callback returns, are not stored internally.
        const NO_INTERNAL_STORE = 0x0200;
        /// Both [`NO_INTERNAL_LOOKUP`](Self::NO_INTERNAL_LOOKUP) and [`NO_INTERNAL_STORE`](Self::NO_INTERNAL_STORE).
        const NO_INTERNAL = Self::NO_INTERNAL_LOOKUP.bits() | Self::NO_INTERNAL_STORE.bits();
        /// A session's time is set to now whenever it is added to the internal cache.
        const UPDATE_TIME = 0x0400;
    }
}

impl CacheMode {
    /// No session caching for client or server.
    pub const OFF: CacheMode = CacheMode::empty();

    /// Names in display order: roles first, composites before their parts.
    const NAMES: [(&'static str, CacheMode); 9] = [
        ("both", CacheMode::BOTH),
        ("client", CacheMode::CLIENT),
        ("server", CacheMode::SERVER),
        ("no-auto-clear", CacheMode::NO_AUTO_CLEAR),
        ("no-internal", CacheMode::NO_INTERNAL),
        ("no-internal-lookup", CacheMode::NO_INTERNAL_LOOKUP),
        ("no-internal-store", CacheMode::NO_INTERNAL_STORE),
        ("update-time", CacheMode::UPDATE_TIME),
        ("off", CacheMode::OFF),
    ];
}

impl Default for CacheMode {
    fn default() -> Self {
        CacheMode::SERVER
    }
}

impl FromStr for CacheMode {
    type Err = ParseModeError;

    /// Parses a comma-separated list of names (`off`, `client`, `server`, `both`,
    /// `no-auto-clear`, `no-internal-lookup`, `no-internal-store`, `no-internal`,
    /// `update-time`), case-insensitively; underscores may stand for dashes.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut mode = CacheMode::OFF;
        for part in s.split(',') {
            let name = part.trim().to_ascii_lowercase().replace('_', "-");
            let flag = CacheMode::NAMES
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, f)| *f)
                .ok_or_else(|| ParseModeError(part.trim().to_owned()))?;
            mode |= flag;
        }
        Ok(mode)
    }
}

impl fmt::Display for CacheMode {
    /// Writes the mode in the form [`FromStr`] reads, composite names first.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("off");
        }
        let mut rest = *self;
        let mut first = true;
        for (name, flag) in CacheMode::NAMES {
            if !flag.is_empty() && rest.contains(flag) {
                rest.remove(flag);
                if !first {
                    f.write_str(",")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

/// The side of a connection a cache operation is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// A TLS client.
    Client,
    /// A TLS server.
    Server,
}

impl Role {
    /// The mode bit that enables caching for this role.
    #[inline]
    pub fn mode_bit(self) -> CacheMode {
        match self {
            Role::Client => CacheMode::CLIENT,
            Role::Server => CacheMode::SERVER,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_match_openssl() {
        assert_eq!(CacheMode::OFF.bits(), 0x0);
        assert_eq!(CacheMode::CLIENT.bits(), 0x1);
        assert_eq!(CacheMode::SERVER.bits(), 0x2);
        assert_eq!(CacheMode::BOTH.bits(), 0x3);
        assert_eq!(CacheMode::NO_AUTO_CLEAR.bits(), 0x80);
        assert_eq!(CacheMode::NO_INTERNAL_LOOKUP.bits(), 0x100);
        assert_eq!(CacheMode::NO_INTERNAL_STORE.bits(), 0x200);
        assert_eq!(CacheMode::NO_INTERNAL.bits(), 0x300);
        assert_eq!(CacheMode::UPDATE_TIME.bits(), 0x400);
        assert_eq!(CacheMode::default(), CacheMode::SERVER);
    }

    #[test]
    fn parse_and_display_round_trip() {
        for bits in 0..=0x7ffu32 {
            let mode = CacheMode::from_bits_truncate(bits);
            let text = mode.to_string();
            assert_eq!(text.parse::<CacheMode>(), Ok(mode), "{text}");
        }
        assert_eq!("OFF".parse(), Ok(CacheMode::OFF));
        assert_eq!(
            " server , no_auto_clear".parse(),
            Ok(CacheMode::SERVER | CacheMode::NO_AUTO_CLEAR)
        );
        assert!("".parse::<CacheMode>().is_err());
        assert!("server,,client".parse::<CacheMode>().is_err());
    }
}
