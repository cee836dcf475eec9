//! `cidr` patterns: an IPv4 or IPv6 network, matched against event strings that are IP
//! addresses.
//!
//! A network is kept as the inclusive range of addresses it covers, as integers, so the
//! rule-set index can store it in the same interval structure as numeric ranges.

use std::net::IpAddr;

/// Address family of a network or address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Family {
    /// IPv4 (addresses are `u32` values widened to `u128`).
    V4,
    /// IPv6.
    V6,
}

/// A validated CIDR block: every address from `first` to `last`, inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cidr {
    pub(crate) family: Family,
    pub(crate) first: u128,
    pub(crate) last: u128,
}

impl Cidr {
    /// Parses `address/prefix-length`; host bits below the prefix are ignored.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("invalid CIDR \"{text}\": expected ADDRESS/PREFIX-LENGTH");
        let (address, length) = text.split_once('/').ok_or_else(bad)?;
        let address: IpAddr = address.parse().map_err(|_| bad())?;
        if length.is_empty() || !length.bytes().all(|b| b.is_ascii_digit()) || length.len() > 3 {
            return Err(bad());
        }
        let length: u32 = length.parse().map_err(|_| bad())?;
        let (family, value, bits) = to_int(address);
        if length > bits {
            return Err(format!(
                "invalid CIDR \"{text}\": prefix length {length} is longer than {bits} bits"
            ));
        }
        let host_bits = bits - length;
        let host_mask: u128 = if host_bits == 0 {
            0
        } else {
            u128::MAX >> (128 - host_bits)
        };
        Ok(Self {
            family,
            first: value & !host_mask,
            last: value | host_mask,
        })
    }

    /// Whether `value` is an IP address inside this block.
    pub(crate) fn contains(&self, value: &str) -> bool {
        match parse_ip(value) {
            Some((family, ip)) => family == self.family && self.first <= ip && ip <= self.last,
            None => false,
        }
    }
}

/// Parses an event string as an IP address: its family and integer value.
pub(crate) fn parse_ip(value: &str) -> Option<(Family, u128)> {
    // Cheap rejection before the real parser: addresses are short and start with a hex
    // digit or ':'.
    let first = *value.as_bytes().first()?;
    if value.len() > 45 || !(first.is_ascii_hexdigit() || first == b':') {
        return None;
    }
    let address: IpAddr = value.parse().ok()?;
    let (family, ip, _) = to_int(address);
    Some((family, ip))
}

fn to_int(address: IpAddr) -> (Family, u128, u32) {
    match address {
        IpAddr::V4(v4) => (Family::V4, u128::from(u32::from(v4)), 32),
        IpAddr::V6(v6) => (Family::V6, u128::from(v6), 128),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_blocks() {
        let c = Cidr::parse("10.0.0.0/24").unwrap();
        assert!(c.contains("10.0.0.0"));
        assert!(c.contains("10.0.0.255"));
        assert!(!c.contains("10.0.1.0"));
        assert!(!c.contains("not an ip"));
        assert!(
            !c.contains("::ffff:10.0.0.1"),
            "IPv6 forms are another family"
        );
        let host = Cidr::parse("192.168.1.7/32").unwrap();
        assert!(host.contains("192.168.1.7"));
        assert!(!host.contains("192.168.1.8"));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains("255.255.255.255"));
    }

    #[test]
    fn host_bits_are_masked() {
        let c = Cidr::parse("10.1.2.3/8").unwrap();
        assert!(c.contains("10.200.0.1"));
        assert!(!c.contains("11.0.0.0"));
    }

    #[test]
    fn ipv6_blocks() {
        let c = Cidr::parse("2001:db8::/32").unwrap();
        assert!(c.contains("2001:db8::1"));
        assert!(c.contains("2001:0db8:ffff::"));
        assert!(!c.contains("2001:db9::"));
        assert!(!c.contains("10.0.0.1"));
        let all = Cidr::parse("::/0").unwrap();
        assert!(all.contains("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"));
    }

    #[test]
    fn invalid_blocks() {
        for bad in [
            "10.0.0.0",
            "10.0.0.0/33",
            "10.0.0/8",
            "::/129",
            "x/8",
            "10.0.0.0/",
            "10.0.0.0/-1",
            "10.0.0.0/+8",
            "",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }
}
