//! Key rings: named 256-bit keys read from a key file; the first seals, every one opens.
//!
//! Sealing uses XChaCha20-Poly1305 (ChaCha20-Poly1305 with a 192-bit nonce): every value gets
//! a fresh random nonce, and the nonce space is large enough that a fleet sharing one key can
//! seal without coordination and without a bound on the number of values that matters.
//!
//! A sealed value is `version (1) ‖ name length (1) ‖ key name ‖ nonce (24) ‖ ciphertext ‖ tag
//! (16)`. The caller's associated data is authenticated along with it, so a value only opens
//! under the key (Redis key, format version) it was sealed for.

use std::fmt;
use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::error::{KeyFileError, OpenError};

/// The length of a key, in bytes (256 bits).
pub const KEY_LEN: usize = 32;

/// The longest key name.
pub const MAX_NAME_LEN: usize = 32;

/// The format version of sealed values.
pub const SEAL_VERSION: u8 = 2;

const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

struct Key {
    name: String,
    cipher: XChaCha20Poly1305,
}

/// Named 256-bit keys: the first seals, all of them open. Keys rotate by putting a new key
/// first and keeping the old ones below it until the sessions they sealed have expired.
pub struct KeyRing {
    keys: Vec<Key>,
    rng: SystemRandom,
}

/// The longest key file read: far more than any ring needs.
const MAX_KEY_FILE: usize = 64 << 10;

/// The file's permission bits if group or others may read it.
fn exposed_mode(meta: &std::fs::Metadata) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        (mode & 0o044 != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        None
    }
}

/// Reads a key file into a buffer allocated once at its final size, wiped when dropped.
fn read_private(file: &mut std::fs::File) -> std::io::Result<Zeroizing<Vec<u8>>> {
    use std::io::Read;
    let mut buf = Zeroizing::new(vec![0u8; MAX_KEY_FILE]);
    let mut len = 0;
    for _ in 0..=MAX_KEY_FILE {
        match file.read(&mut buf[len..]) {
            Ok(0) => {
                buf.truncate(len);
                return Ok(buf);
            }
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        if len == MAX_KEY_FILE {
            break;
        }
    }
    Err(std::io::Error::other(format!(
        "larger than {} KiB",
        MAX_KEY_FILE >> 10
    )))
}

fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A key name as an error message shows it: an invalid one is not echoed, since it may be
/// key material written in the wrong place.
fn shown(name: &str) -> String {
    if valid_name(name) {
        format!("{name:?}")
    } else {
        format!("(an invalid name of {} characters)", name.chars().count())
    }
}

fn name_error(line: usize, name: &str) -> KeyFileError {
    KeyFileError::Line {
        line,
        reason: format!(
            "key name {} must be 1 to {MAX_NAME_LEN} letters, digits, '-', '_' or '.'",
            shown(name)
        ),
    }
}

/// One key of a key file, as parsed: its name and its secret (wiped when dropped).
pub(crate) struct FileKey {
    /// Its name in the file.
    pub(crate) name: String,
    /// The 256-bit secret.
    pub(crate) secret: Zeroizing<[u8; KEY_LEN]>,
}

/// Checks `(line, name, key)` triples: valid, distinct names, and at least one key.
fn check_keys(
    keys: impl IntoIterator<Item = (usize, String, Zeroizing<[u8; KEY_LEN]>)>,
) -> Result<Vec<FileKey>, KeyFileError> {
    let mut out: Vec<FileKey> = Vec::new();
    for (line, name, secret) in keys {
        if !valid_name(&name) {
            return Err(name_error(line, &name));
        }
        if out.iter().any(|k| k.name == name) {
            return Err(KeyFileError::Line {
                line,
                reason: format!("key name {name:?} appears twice"),
            });
        }
        out.push(FileKey { name, secret });
    }
    if out.is_empty() {
        return Err(KeyFileError::Empty);
    }
    Ok(out)
}

/// Parses the text of a key file (`name:hex` lines, `#` comments, blank lines) into its keys,
/// in order; an error names the line.
pub(crate) fn parse_key_lines(text: &str) -> Result<Vec<FileKey>, KeyFileError> {
    let mut keys = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |reason: String| KeyFileError::Line {
            line: i + 1,
            reason,
        };
        let (name, hex_key) = line
            .split_once(':')
            .ok_or_else(|| bad("expected name:hex".to_owned()))?;
        let (name, hex_key) = (name.trim(), hex_key.trim());
        if hex_key.len() != 2 * KEY_LEN {
            return Err(bad(format!(
                "key {} has {} hex digits; a 256-bit key has {}",
                shown(name),
                hex_key.len(),
                2 * KEY_LEN
            )));
        }
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        hex::decode_to_slice(hex_key, &mut bytes[..])
            .map_err(|_| bad(format!("key {} is not hexadecimal", shown(name))))?;
        keys.push((i + 1, name.to_owned(), bytes));
    }
    check_keys(keys)
}

/// A key file read into memory: its bytes (wiped when dropped) and whether group or others
/// may read it.
pub(crate) struct KeyFileText<'p> {
    path: &'p Path,
    bytes: Zeroizing<Vec<u8>>,
    exposed: Option<u32>,
}

impl KeyFileText<'_> {
    /// The file's text; an error if it is not UTF-8.
    pub(crate) fn text(&self) -> Result<&str, KeyFileError> {
        std::str::from_utf8(&self.bytes).map_err(|_| KeyFileError::NotText {
            path: self.path.to_path_buf(),
        })
    }

    /// Whether group or others may read the file.
    pub(crate) fn exposed(&self) -> bool {
        self.exposed.is_some()
    }

    /// Logs one warning naming the file and its mode (never its contents) if group or others
    /// may read it.
    pub(crate) fn warn_if_exposed(&self) {
        if let Some(mode) = self.exposed {
            tracing::warn!(
                key_file = %self.path.display(),
                mode = format_args!("{mode:o}"),
                "the key file can be read by group or others; chmod 600 it"
            );
        }
    }
}

/// Reads a key file into one buffer allocated once at its final size (it never grows and
/// leaves copies behind), wiped when dropped.
pub(crate) fn read_key_file(path: &Path) -> Result<KeyFileText<'_>, KeyFileError> {
    let io = |source: std::io::Error| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let exposed = exposed_mode(&file.metadata().map_err(io)?);
    let bytes = read_private(&mut file).map_err(io)?;
    Ok(KeyFileText {
        path,
        bytes,
        exposed,
    })
}

impl KeyRing {
    /// A ring of `(name, key)` pairs, the sealing key first.
    pub fn new<I, N>(keys: I) -> Result<Self, KeyFileError>
    where
        I: IntoIterator<Item = (N, [u8; KEY_LEN])>,
        N: Into<String>,
    {
        Self::build(
            keys.into_iter()
                .enumerate()
                .map(|(i, (name, bytes))| (i + 1, name.into(), Zeroizing::new(bytes))),
        )
    }

    /// Builds a ring from `(line, name, key)`; errors name the line.
    fn build(
        keys: impl IntoIterator<Item = (usize, String, Zeroizing<[u8; KEY_LEN]>)>,
    ) -> Result<Self, KeyFileError> {
        Ok(Self::from_file_keys(check_keys(keys)?))
    }

    /// A ring of checked keys, in order.
    fn from_file_keys(keys: Vec<FileKey>) -> Self {
        Self {
            keys: keys
                .into_iter()
                .map(|k| Key {
                    cipher: XChaCha20Poly1305::new((&*k.secret).into()),
                    name: k.name,
                })
                .collect(),
            rng: SystemRandom::new(),
        }
    }

    /// Parses a key file: one `name:hex` key per line (64 hex digits, 256 bits), the sealing
    /// key first; blank lines and lines starting with `#` are ignored.
    ///
    /// ```
    /// use reprise_seal::KeyRing;
    /// let text = format!("# rotated 2026-11\nnew:{}\nold:{}\n", "ab".repeat(32), "cd".repeat(32));
    /// let ring = KeyRing::parse(&text).unwrap();
    /// assert_eq!(ring.names(), vec!["new", "old"]);
    /// assert!(KeyRing::parse("short:abcd").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<Self, KeyFileError> {
        Ok(Self::from_file_keys(parse_key_lines(text)?))
    }

    /// Reads and parses a key file. The key material goes from the file into one buffer that
    /// is allocated once (it never grows and leaves copies behind) and wiped when dropped, as
    /// are the keys decoded from it. A file that group or others can read is loaded, with one
    /// warning in the log naming the file and its mode (never its contents); one that does not
    /// load is only an error.
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let file = read_key_file(path)?;
        let ring = Self::parse(file.text()?).map_err(|e| e.in_file(path))?;
        // Only for a file that is used: a bad one is an error, and its one line says so.
        file.warn_if_exposed();
        Ok(ring)
    }

    /// A new key-file line with a fresh random key, `name:hex`, built in place (no formatting
    /// copies) and wiped when dropped.
    pub fn generate_line(name: &str) -> Result<Zeroizing<String>, KeyFileError> {
        if !valid_name(name) {
            return Err(KeyFileError::InvalidName(name.to_owned()));
        }
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        SystemRandom::new()
            .fill(&mut bytes[..])
            .map_err(|_| KeyFileError::Random)?;
        let mut hex_key = Zeroizing::new([0u8; 2 * KEY_LEN]);
        hex::encode_to_slice(&bytes[..], &mut hex_key[..]).map_err(|_| KeyFileError::Random)?;
        let mut line = Zeroizing::new(String::with_capacity(name.len() + 1 + 2 * KEY_LEN));
        line.push_str(name);
        line.push(':');
        for &b in hex_key.iter() {
            line.push(char::from(b));
        }
        Ok(line)
    }

    /// The keys' names, the sealing key first.
    pub fn names(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.name.as_str()).collect()
    }

    /// Seals `plaintext` under the first key, authenticating `ad` with it.
    pub fn seal(&self, ad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, OpenError> {
        let key = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| OpenError::Random)?;
        let sealed = key
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: ad,
                },
            )
            .map_err(|_| OpenError::Forged)?;
        let mut out = Vec::with_capacity(2 + key.name.len() + NONCE_LEN + sealed.len());
        out.push(SEAL_VERSION);
        out.push(key.name.len() as u8);
        out.extend_from_slice(key.name.as_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens a sealed value with the key it names, checking `ad`.
    pub fn open(&self, ad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        let (&version, rest) = sealed.split_first().ok_or(OpenError::Malformed)?;
        if version != SEAL_VERSION {
            return Err(OpenError::Version(version));
        }
        let (&name_len, rest) = rest.split_first().ok_or(OpenError::Malformed)?;
        let name_len = usize::from(name_len);
        if rest.len() < name_len + NONCE_LEN + TAG_LEN {
            return Err(OpenError::Malformed);
        }
        let (name, rest) = rest.split_at(name_len);
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let key = self
            .keys
            .iter()
            .find(|k| k.name.as_bytes() == name)
            .ok_or(OpenError::UnknownKey)?;
        key.cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: ad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| OpenError::Forged)
    }
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names only: the keys never appear.
        f.debug_struct("KeyRing")
            .field("names", &self.names())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(text: &str) -> KeyRing {
        KeyRing::parse(text).unwrap()
    }

    #[test]
    fn seals_and_opens_with_rotation() -> Result<(), OpenError> {
        let old = ring(&format!("old:{}", "11".repeat(32)));
        let rotated = ring(&format!("new:{}\nold:{}", "22".repeat(32), "11".repeat(32)));
        let sealed_old = old.seal(b"ad", b"secret")?;
        assert_eq!(&rotated.open(b"ad", &sealed_old)?[..], b"secret");
        let sealed_new = rotated.seal(b"ad", b"secret")?;
        assert_eq!(old.open(b"ad", &sealed_new), Err(OpenError::UnknownKey));
        // Another associated data (another Redis key): forged.
        assert_eq!(rotated.open(b"other", &sealed_new), Err(OpenError::Forged));
        // Every single-bit flip is caught.
        for i in 0..sealed_new.len() {
            let mut v = sealed_new.clone();
            v[i] ^= 1;
            assert!(rotated.open(b"ad", &v).is_err(), "bit flip at {i}");
        }
        // Truncations never panic.
        for n in 0..sealed_new.len() {
            assert!(rotated.open(b"ad", &sealed_new[..n]).is_err());
        }
        // The same plaintext seals differently each time.
        assert_ne!(rotated.seal(b"ad", b"x")?, rotated.seal(b"ad", b"x")?);
        Ok(())
    }

    #[test]
    fn key_files_are_strict() {
        let k = "ab".repeat(32);
        assert!(KeyRing::parse("").is_err());
        assert!(KeyRing::parse("# only a comment").is_err());
        let errors = [
            (format!("a:{}", "ab".repeat(31)), "62 hex digits"),
            (format!("a:{}zz", "ab".repeat(31)), "not hexadecimal"),
            (format!("a:{k}\na:{k}"), "appears twice"),
            (format!("bad name:{k}"), "must be"),
            (k.clone(), "expected name:hex"),
        ];
        for (text, want) in errors {
            let e = KeyRing::parse(&text).unwrap_err();
            assert!(e.to_string().contains(want), "{text}: {e}");
        }
        let e = KeyRing::parse(&format!("\n# x\nok:{k}\nbad:{}", "ab".repeat(16)));
        assert!(e.is_err_and(|e| e.to_string().contains("line 4")));
        // A key written where the name goes is never echoed.
        for text in [
            format!("{k}:{k}"),
            format!("{k}:abcd"),
            format!("{k}:{}zz", "ab".repeat(31)),
        ] {
            let e = KeyRing::parse(&text).unwrap_err().to_string();
            assert!(!e.contains(&k) && e.contains("invalid name of 64"), "{e}");
        }
    }

    #[test]
    fn generated_lines_parse_and_debug_hides_keys() -> Result<(), KeyFileError> {
        let line = KeyRing::generate_line("k1")?;
        let ring = KeyRing::parse(&line)?;
        assert_eq!(ring.names(), vec!["k1"]);
        let printed = format!("{ring:?}");
        assert!(!printed.contains(&line[3..]), "{printed}");
        assert!(KeyRing::generate_line("no spaces").is_err());
        assert_eq!(line.len(), 3 + 64);
        assert_ne!(*KeyRing::generate_line("k1")?, *line);
        Ok(())
    }

    #[test]
    fn key_files_load_and_oversized_ones_do_not() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("keys");
        std::fs::write(
            &path,
            format!(
                "# comment\nk2:{}\nk1:{}\n",
                "ab".repeat(32),
                "cd".repeat(32)
            ),
        )?;
        assert_eq!(KeyRing::load(&path)?.names(), vec!["k2", "k1"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for (mode, exposed) in [
                (0o600, None),
                (0o640, Some(0o640)),
                (0o604, Some(0o604)),
                (0o400, None),
            ] {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
                assert_eq!(
                    exposed_mode(&std::fs::metadata(&path)?),
                    exposed,
                    "{mode:o}"
                );
            }
        }
        std::fs::write(&path, vec![b'#'; MAX_KEY_FILE + 1])?;
        let e = KeyRing::load(&path)
            .err()
            .ok_or("an oversized file loaded")?;
        // The file names itself; the reason is the error underneath.
        let cause = std::error::Error::source(&e).map(ToString::to_string);
        assert!(e.to_string().contains("cannot read key file"), "{e}");
        assert!(
            cause.as_deref().is_some_and(|c| c.contains("larger than")),
            "{cause:?}"
        );
        std::fs::write(&path, [0xff, 0xfe])?;
        assert!(KeyRing::load(&path).is_err());
        assert!(KeyRing::load(&dir.path().join("absent")).is_err());
        Ok(())
    }
}
