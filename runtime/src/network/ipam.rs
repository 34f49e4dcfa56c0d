//! Address arithmetic and allocation for both IP families: subnets parsed and compared, and
//! the addresses of one subnet handed out as dockerd's default IPAM driver hands them out
//! (the lowest free one, from the `--ip-range` when there is one; never the subnet's own
//! address, its gateway or, for IPv4, its broadcast address).
//!
//! Written over `u128` so one allocator serves IPv4 and IPv6 networks alike.

use std::collections::HashSet;
use std::fmt::Display;
use std::hash::Hash;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use super::NetworkError;

/// An address family as the arithmetic sees it.
pub trait Family: Copy + Eq + Hash + Display + FromStr + std::fmt::Debug + Send + Sync + 'static {
    /// The address's width in bits.
    const BITS: u8;
    /// The longest prefix a network may have (dockerd's pools leave room for a gateway and a
    /// container at least).
    const MAX_PREFIX: u8;
    fn to_bits(self) -> u128;
    fn from_bits(bits: u128) -> Self;
}

impl Family for Ipv4Addr {
    const BITS: u8 = 32;
    const MAX_PREFIX: u8 = 30;
    fn to_bits(self) -> u128 {
        u32::from(self) as u128
    }
    fn from_bits(bits: u128) -> Self {
        Ipv4Addr::from(bits as u32)
    }
}

impl Family for Ipv6Addr {
    const BITS: u8 = 128;
    const MAX_PREFIX: u8 = 126;
    fn to_bits(self) -> u128 {
        u128::from(self)
    }
    fn from_bits(bits: u128) -> Self {
        Ipv6Addr::from(bits)
    }
}

/// The mask of a `prefix`-bit network in family `A`'s width.
pub fn mask<A: Family>(prefix: u8) -> u128 {
    let host_bits = (A::BITS - prefix.min(A::BITS)) as u32;
    all::<A>() & all::<A>().checked_shl(host_bits).unwrap_or(0)
}

/// Every bit of family `A`'s width set.
fn all<A: Family>() -> u128 {
    if A::BITS == 128 { u128::MAX } else { (1u128 << A::BITS) - 1 }
}

/// The first and the last address of a subnet.
fn bounds<A: Family>((base, prefix): (A, u8)) -> (u128, u128) {
    let first = base.to_bits() & mask::<A>(prefix);
    (first, first | (!mask::<A>(prefix) & all::<A>()))
}

/// The network address of `ip` in a `prefix`-bit network.
pub fn network<A: Family>(ip: A, prefix: u8) -> A {
    A::from_bits(ip.to_bits() & mask::<A>(prefix))
}

/// Parses `address/prefix` into its network address and prefix.
pub fn parse_cidr<A: Family>(s: &str) -> Option<(A, u8)> {
    let (ip, prefix) = s.split_once('/')?;
    let ip: A = ip.parse().ok()?;
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= A::MAX_PREFIX)?;
    Some((network(ip, prefix), prefix))
}

/// Whether two subnets overlap.
pub fn overlaps<A: Family>(a: (A, u8), b: (A, u8)) -> bool {
    let m = mask::<A>(a.1.min(b.1));
    a.0.to_bits() & m == b.0.to_bits() & m
}

/// Whether `ip` is in the subnet.
pub fn contains<A: Family>(subnet: (A, u8), ip: A) -> bool {
    overlaps(subnet, (ip, A::BITS))
}

/// The addresses of one subnet: which are taken, and who gets the next.
#[derive(Debug)]
pub struct Space<A: Family> {
    pub subnet: (A, u8),
    pub gateway: A,
    /// Where addresses are taken from when none is asked for (`--ip-range`).
    pub range: Option<(A, u8)>,
    used: HashSet<A>,
}

impl<A: Family> Space<A> {
    pub fn new(subnet: (A, u8), gateway: A, range: Option<(A, u8)>) -> Self {
        Space { subnet: (network(subnet.0, subnet.1), subnet.1), gateway, range, used: HashSet::new() }
    }

    /// Marks addresses no container is given (auxiliary addresses).
    pub fn reserve(&mut self, ips: impl IntoIterator<Item = A>) {
        self.used.extend(ips);
    }

    /// The subnet's own address, its gateway and (IPv4) its broadcast address.
    fn reserved(&self, ip: A) -> bool {
        ip == self.gateway || edge(self.subnet, ip)
    }

    /// Takes `preferred` when it is free (refused with dockerd's words otherwise), or the
    /// lowest free address.
    pub fn take(&mut self, preferred: Option<A>) -> Result<A, NetworkError> {
        if let Some(p) = preferred {
            if !contains(self.subnet, p) {
                return Err(NetworkError::BadAddress(format!(
                    "Invalid address {p}: It does not belong to any of this network's subnets"
                )));
            }
            if self.reserved(p) || !self.used.insert(p) {
                return Err(NetworkError::BadAddress("Address already in use".into()));
            }
            return Ok(p);
        }
        // As dockerd's bitmap has it, a range's own edges are never handed out either.
        let range = self.range.unwrap_or(self.subnet);
        let (first, last) = bounds(range);
        let found = (first..=last)
            .map(A::from_bits)
            .find(|a| contains(self.subnet, *a) && !self.reserved(*a) && !edge(range, *a) && !self.used.contains(a))
            .ok_or_else(|| NetworkError::Exhausted(format!("{}/{}", self.subnet.0, self.subnet.1)))?;
        self.used.insert(found);
        Ok(found)
    }

    pub fn give_back(&mut self, ip: A) {
        self.used.remove(&ip);
    }
}

/// Whether `ip` is the subnet's own address or (IPv4) its broadcast address.
fn edge<A: Family>(subnet: (A, u8), ip: A) -> bool {
    let (first, last) = bounds(subnet);
    ip.to_bits() == first || (A::BITS == 32 && ip.to_bits() == last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_parse_and_overlap_in_both_families() {
        assert_eq!(parse_cidr::<Ipv4Addr>("10.1.2.3/24"), Some((Ipv4Addr::new(10, 1, 2, 0), 24)));
        assert_eq!(parse_cidr::<Ipv4Addr>("10.1.2.3"), None);
        assert_eq!(parse_cidr::<Ipv4Addr>("10.1.2.3/31"), None);
        assert_eq!(parse_cidr::<Ipv4Addr>("fd00::/64"), None);
        assert_eq!(parse_cidr::<Ipv6Addr>("fd00:1::5/64"), Some(("fd00:1::".parse().unwrap(), 64)));
        assert_eq!(parse_cidr::<Ipv6Addr>("fd00::/0"), Some((Ipv6Addr::UNSPECIFIED, 0)));
        assert!(overlaps::<Ipv6Addr>(("fd00::".parse().unwrap(), 48), ("fd00:0:0:5::".parse().unwrap(), 64)));
        assert!(!overlaps::<Ipv6Addr>(("fd00::".parse().unwrap(), 64), ("fd00:0:0:1::".parse().unwrap(), 64)));
        assert_eq!(mask::<Ipv4Addr>(0), 0);
        assert_eq!(mask::<Ipv4Addr>(24), 0xffff_ff00);
        assert_eq!(mask::<Ipv6Addr>(128), u128::MAX);
    }

    #[test]
    fn addresses_are_handed_out_as_dockerd_does() {
        let mut s = Space::new((Ipv4Addr::new(10, 0, 0, 0), 30), Ipv4Addr::new(10, 0, 0, 1), None);
        // A /30 has one address for a container: .0 is the subnet, .1 the gateway, .3 broadcast.
        assert_eq!(s.take(None).unwrap(), Ipv4Addr::new(10, 0, 0, 2));
        assert!(matches!(s.take(None), Err(NetworkError::Exhausted(_))));
        s.give_back(Ipv4Addr::new(10, 0, 0, 2));
        let refused = |r: Result<Ipv4Addr, NetworkError>| r.unwrap_err().to_string();
        assert_eq!(refused(s.take(Some(Ipv4Addr::new(10, 0, 0, 1)))), "Address already in use");
        assert_eq!(refused(s.take(Some(Ipv4Addr::new(10, 0, 0, 3)))), "Address already in use");
        assert_eq!(
            refused(s.take(Some(Ipv4Addr::new(10, 9, 0, 3)))),
            "Invalid address 10.9.0.3: It does not belong to any of this network's subnets"
        );
        // IPv6: the gateway elsewhere leaves ::1 free; no broadcast; a range is where the
        // next one comes from, while any address of the subnet may be asked for.
        let g: Ipv6Addr = "fd00:77::fe".parse().unwrap();
        let mut s6 = Space::new(("fd00:77::".parse::<Ipv6Addr>().unwrap(), 64), g, None);
        assert_eq!(s6.take(None).unwrap(), "fd00:77::1".parse::<Ipv6Addr>().unwrap());
        s6.reserve(["fd00:77::2".parse().unwrap()]);
        assert_eq!(s6.take(None).unwrap(), "fd00:77::3".parse::<Ipv6Addr>().unwrap());
        let mut r6 = Space::new(("fd00:79::".parse::<Ipv6Addr>().unwrap(), 64), "fd00:79::1".parse().unwrap(), None);
        r6.range = Some(("fd00:79::100".parse().unwrap(), 120));
        assert_eq!(r6.take(None).unwrap(), "fd00:79::101".parse::<Ipv6Addr>().unwrap());
        let mut r4 = Space::new((Ipv4Addr::new(10, 83, 0, 0), 16), Ipv4Addr::new(10, 83, 0, 1), None);
        r4.range = Some((Ipv4Addr::new(10, 83, 1, 64), 26));
        assert_eq!(r4.take(None).unwrap(), Ipv4Addr::new(10, 83, 1, 65));
        assert_eq!(r6.take(Some("fd00:79::5".parse().unwrap())).unwrap(), "fd00:79::5".parse::<Ipv6Addr>().unwrap());
    }
}
