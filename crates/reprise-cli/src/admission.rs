//! Admission of new connections, against slowloris: a cap on the connections one client
//! address holds at once (an IPv6 address counts by its /64). The ClientHello is then read
//! under a short deadline into a buffer that grows with what the client has sent, by
//! `reprise_rustls::Acceptor`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

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
}
