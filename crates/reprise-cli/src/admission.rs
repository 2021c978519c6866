//! Admission of new connections, against slowloris: a cap on the connections one client
//! address holds at once (an IPv6 address counts by its /64), and the ClientHello read under a
//! short deadline into a buffer that grows with what the client has sent.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use reprise_rustls::client_hello::{ClientHelloInfo, ClientHelloParser, Parsed, MAX_FIRST_FLIGHT};
use tokio::net::TcpStream;

/// The first read's buffer: most ClientHellos fit, and an idle client that sent a few bytes
/// holds no more than this.
const FIRST_READ: usize = 512;

/// The most a read grows the buffer by: one TLS record's worth.
const MAX_GROWTH: usize = 16 * 1024;

/// Who a connection is counted against: an IPv4 address, or the /64 of an IPv6 address (one
/// host usually holds a whole /64). IPv4-mapped IPv6 addresses count as IPv4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddrKey {
    /// An IPv4 address.
    V4([u8; 4]),
    /// The first 64 bits of an IPv6 address.
    V6([u8; 8]),
}

impl AddrKey {
    /// The key a client address is counted under.
    pub fn of(ip: IpAddr) -> AddrKey {
        match ip {
            IpAddr::V4(v4) => AddrKey::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddrKey::V4(v4.octets()),
                None => {
                    let o = v6.octets();
                    AddrKey::V6([o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]])
                }
            },
        }
    }
}

/// The connections each client address holds now, capped at `limit`.
///
/// The table has an entry only for an address that holds a connection, so it never has more
/// entries than there are connections.
#[derive(Debug)]
pub struct PerAddress {
    limit: usize,
    open: Mutex<HashMap<AddrKey, usize>>,
}

/// One connection counted against its address; dropping it gives the place back.
#[derive(Debug)]
pub struct AddressPermit {
    table: Arc<PerAddress>,
    key: AddrKey,
}

impl PerAddress {
    /// A table that lets each address hold at most `limit` connections.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Counts one more connection from `ip`, or None if its address already holds `limit`.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<AddressPermit> {
        let key = AddrKey::of(ip);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(key).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(AddressPermit {
            table: self.clone(),
            key,
        })
    }

    /// How many connections `ip`'s address holds now.
    #[cfg(test)]
    pub fn held(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(&AddrKey::of(ip)).copied().unwrap_or(0)
    }
}

impl Drop for AddressPermit {
    fn drop(&mut self) {
        let mut open = self
            .table
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// A client's first bytes, as read, and the ClientHello they hold.
#[derive(Debug)]
pub struct FirstFlight {
    /// Every byte read, to be read again by rustls.
    pub bytes: Vec<u8>,
    /// The ClientHello, if the bytes hold a whole, well-formed one. None if they are malformed
    /// (rustls answers with the right alert), if the client closed first, or if they reached
    /// [`MAX_FIRST_FLIGHT`] undecided (rustls decides).
    pub hello: Option<ClientHelloInfo>,
}

/// Reads from `tcp` until its ClientHello is complete, shown malformed, or the client closes.
///
/// While nothing has arrived, the connection holds no buffer. The buffer then grows with what
/// the client sent, about doubling at each full read: its capacity stays under twice the bytes
/// read plus [`FIRST_READ`], and never exceeds [`MAX_FIRST_FLIGHT`]. The caller bounds the time.
pub async fn read_first_flight(tcp: &TcpStream) -> io::Result<FirstFlight> {
    let mut bytes = Vec::new();
    let mut parser = ClientHelloParser::new();
    loop {
        match parser.parse(&bytes) {
            Parsed::Complete(info) => {
                return Ok(FirstFlight {
                    bytes,
                    hello: Some(info),
                })
            }
            Parsed::Invalid(_) => return Ok(FirstFlight { bytes, hello: None }),
            Parsed::Incomplete if bytes.len() >= MAX_FIRST_FLIGHT => {
                return Ok(FirstFlight { bytes, hello: None })
            }
            Parsed::Incomplete => {}
        }
        tcp.readable().await?;
        if bytes.len() == bytes.capacity() {
            let grow = bytes
                .len()
                .clamp(FIRST_READ, MAX_GROWTH)
                .min(MAX_FIRST_FLIGHT - bytes.len());
            bytes.reserve_exact(grow);
        }
        match tcp.try_read_buf(&mut bytes) {
            Ok(0) => return Ok(FirstFlight { bytes, hello: None }),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn an_address_holds_at_most_its_limit_and_gets_places_back() {
        let table = PerAddress::new(2);
        let a = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let b = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
        let first = table.try_acquire(a);
        let second = table.try_acquire(a);
        assert!(first.is_some() && second.is_some());
        assert!(table.try_acquire(a).is_none());
        assert!(
            table.try_acquire(b).is_some(),
            "another address has its own places"
        );
        drop(first);
        assert_eq!(table.held(a), 1);
        assert!(table.try_acquire(a).is_some());
    }

    #[test]
    fn ipv6_counts_by_its_64_and_mapped_ipv4_as_ipv4() {
        let table = PerAddress::new(1);
        let one: Ipv6Addr = "2001:db8:1:2::1".parse().unwrap_or(Ipv6Addr::LOCALHOST);
        let same_64: Ipv6Addr = "2001:db8:1:2:ffff::9"
            .parse()
            .unwrap_or(Ipv6Addr::LOCALHOST);
        let other_64: Ipv6Addr = "2001:db8:1:3::1".parse().unwrap_or(Ipv6Addr::LOCALHOST);
        let _held = table.try_acquire(IpAddr::V6(one));
        assert!(table.try_acquire(IpAddr::V6(same_64)).is_none());
        let other = table.try_acquire(IpAddr::V6(other_64));
        assert!(other.is_some());

        let v4 = Ipv4Addr::new(198, 51, 100, 7);
        let _v4 = table.try_acquire(IpAddr::V4(v4));
        assert!(table.try_acquire(IpAddr::V6(v4.to_ipv6_mapped())).is_none());
        assert_eq!(table.open.lock().map(|m| m.len()).unwrap_or(0), 3);
    }

    #[tokio::test]
    async fn the_buffer_grows_with_what_was_sent() -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let mut client = TcpStream::connect(listener.local_addr()?).await?;
        let (server, _) = listener.accept().await?;
        // A record and a ClientHello header announcing 1000 bytes, then 200 of them.
        let mut partial = vec![22, 3, 1, 0x03, 0xec, 1, 0, 0x03, 0xe8, 3, 3];
        partial.resize(209, 0);
        client.write_all(&partial).await?;
        client.shutdown().await?;
        let flight = read_first_flight(&server).await?;
        assert_eq!(flight.bytes, partial);
        assert!(flight.hello.is_none());
        assert!(
            flight.bytes.capacity() <= 2 * partial.len() + FIRST_READ,
            "capacity {}",
            flight.bytes.capacity()
        );
        Ok(())
    }
}
