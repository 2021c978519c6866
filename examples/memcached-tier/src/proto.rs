//! The few commands of memcached's text protocol the tier needs (`set`, `get`, `delete`), over
//! one tokio `TcpStream`, with every line and value bounded.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The longest reply line read (a `VALUE` header is the longest: key, flags, length).
const MAX_LINE: u64 = 512;

/// The largest value accepted from the server: a sealed session is a few hundred bytes, a few
/// KiB with a client certificate chain.
pub(crate) const MAX_VALUE: usize = 64 * 1024;

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("memcached: {what}"))
}

/// One connection to a memcached server.
#[derive(Debug)]
pub(crate) struct Conn {
    stream: BufReader<TcpStream>,
}

impl Conn {
    /// Connects, with Nagle off (every command is one small write that waits for its reply).
    pub(crate) async fn connect(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream: BufReader::new(stream),
        })
    }

    /// `set KEY 0 EXPTIME LEN`: whether the server answered `STORED`.
    pub(crate) async fn set(&mut self, key: &str, value: &[u8], exptime: u64) -> io::Result<bool> {
        let mut cmd = format!("set {key} 0 {exptime} {}\r\n", value.len()).into_bytes();
        cmd.extend_from_slice(value);
        cmd.extend_from_slice(b"\r\n");
        self.stream.get_mut().write_all(&cmd).await?;
        Ok(self.line().await? == "STORED")
    }

    /// `get KEY`: the value, or `None` for a miss.
    pub(crate) async fn get(&mut self, key: &str) -> io::Result<Option<Vec<u8>>> {
        self.stream
            .get_mut()
            .write_all(format!("get {key}\r\n").as_bytes())
            .await?;
        let header = self.line().await?;
        if header == "END" {
            return Ok(None);
        }
        // VALUE <key> <flags> <bytes>
        let mut parts = header.split(' ');
        if parts.next() != Some("VALUE") || parts.next() != Some(key) {
            return Err(bad("unexpected reply to get"));
        }
        let len: usize = parts
            .nth(1)
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| bad("bad value length"))?;
        if len > MAX_VALUE {
            return Err(bad("value too large"));
        }
        let mut value = vec![0; len + 2];
        self.stream.read_exact(&mut value).await?;
        if value[len..] != *b"\r\n" {
            return Err(bad("value not terminated"));
        }
        value.truncate(len);
        if self.line().await? != "END" {
            return Err(bad("more than one value for one key"));
        }
        Ok(Some(value))
    }

    /// `delete KEY`: `true` for `DELETED`, `false` for `NOT_FOUND`.
    pub(crate) async fn delete(&mut self, key: &str) -> io::Result<bool> {
        self.stream
            .get_mut()
            .write_all(format!("delete {key}\r\n").as_bytes())
            .await?;
        match self.line().await?.as_str() {
            "DELETED" => Ok(true),
            "NOT_FOUND" => Ok(false),
            _ => Err(bad("unexpected reply to delete")),
        }
    }

    /// One reply line, without its `\r\n`.
    async fn line(&mut self) -> io::Result<String> {
        let mut buf = Vec::new();
        (&mut self.stream)
            .take(MAX_LINE)
            .read_until(b'\n', &mut buf)
            .await?;
        if !buf.ends_with(b"\r\n") {
            return Err(bad("reply line cut or too long"));
        }
        buf.truncate(buf.len() - 2);
        String::from_utf8(buf).map_err(|_| bad("reply line not text"))
    }
}
