//! IP addresses in patterns: `cidr` blocks, and plain address strings in a value list,
//! matched against event strings that are IP addresses — the way event-ruler does it.
//!
//! event-ruler (`CIDR.java`, `ByteMachine.transitionOn`) turns an address into its bytes
//! with Java's `InetAddress.getByName`, writes them as upper-case hex digits (8 for IPv4,
//! 32 for IPv6) and matches a block as a range over those digit strings
//! (`CIDR.cidr`). A plain address string in a value list becomes the one-address range
//! (`JsonRuleCompiler.writeRules` → `CIDR.ipToRangeIfPossible`), so it matches every
//! spelling of that address. What follows from that encoding, and what this module
//! reproduces:
//!
//! * what counts as an address: `d.d.d.d` with ASCII digits (leading zeros allowed and
//!   read as decimal, octets up to 255, at most 15 characters — Java's IPv4 literal
//!   parser), or hex digits and colons with at least one colon (so no embedded IPv4
//!   `::ffff:1.2.3.4` and no zone `%eth0`); an IPv4-mapped IPv6 address
//!   (`::ffff:a00:1`) is the IPv4 address, as Java makes it an `Inet4Address`;
//! * an address and a block of the same family: the block contains the address;
//! * an IPv6 address and an IPv4 block: the range is matched on the address's first 8
//!   hex digits, so the address matches when its first 32 bits are in the block;
//! * an IPv4 address (8 digits) and an IPv6 block (32 digits): the byte automaton runs
//!   out of digits before the end of the range, and matches only where the 8 digits
//!   already decide that the value is strictly inside it — strictly between the first 32
//!   bits of the block's first and last address (so `::/0` matches every IPv4 address
//!   except `0.0.0.0` and `255.255.255.255`).
//!
//! A block is kept as integer intervals per family of the address it is matched with,
//! so the rule-set index can store it in the same interval structure as numeric ranges.

use std::net::Ipv6Addr;

/// Address family of a network or address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Family {
    /// IPv4 (addresses are `u32` values widened to `u128`).
    V4,
    /// IPv6.
    V6,
}

/// Bits below the first 32 of an IPv6 address.
const LOW_96: u128 = (1 << 96) - 1;

/// A validated IP block (a `cidr` pattern, or a plain address in a value list): every
/// address of `family` from `first` to `last`, inclusive.
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
        let (family, value) = parse_ip(address).ok_or_else(bad)?;
        if length.is_empty() || !length.bytes().all(|b| b.is_ascii_digit()) || length.len() > 3 {
            return Err(bad());
        }
        let length: u32 = length.parse().map_err(|_| bad())?;
        let bits = match family {
            Family::V4 => 32,
            Family::V6 => 128,
        };
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

    /// The block of the one address a plain string in a value list names, if the string
    /// is an IP address (event-ruler compares such a value by address, not as text).
    pub(crate) fn address(text: &str) -> Option<Self> {
        parse_ip(text).map(|(family, value)| Self {
            family,
            first: value,
            last: value,
        })
    }

    /// The addresses of `family` this block matches, as an inclusive interval (see the
    /// module docs for the mixed-family cases).
    pub(crate) fn interval(&self, family: Family) -> Option<(u128, u128)> {
        match (self.family, family) {
            (Family::V4, Family::V4) | (Family::V6, Family::V6) => Some((self.first, self.last)),
            (Family::V4, Family::V6) => Some((self.first << 96, (self.last << 96) | LOW_96)),
            (Family::V6, Family::V4) => {
                let (low, high) = (self.first >> 96, self.last >> 96);
                (high > low + 1).then(|| (low + 1, high - 1))
            }
        }
    }

    /// Whether `value` is an IP address this block matches.
    pub(crate) fn contains(&self, value: &str) -> bool {
        parse_ip(value).is_some_and(|(family, ip)| {
            self.interval(family)
                .is_some_and(|(first, last)| first <= ip && ip <= last)
        })
    }
}

/// Parses a string as an IP address the way event-ruler does (see the module docs): its
/// family and integer value.
pub(crate) fn parse_ip(value: &str) -> Option<(Family, u128)> {
    let bytes = value.as_bytes();
    let first = *bytes.first()?;
    if first.is_ascii_digit() && bytes.iter().all(|b| b.is_ascii_digit() || *b == b'.') {
        return parse_v4(value).map(|ip| (Family::V4, u128::from(ip)));
    }
    // `[0-9a-fA-F:]*:[0-9a-fA-F:]*`; the longest valid form is 39 characters.
    if value.len() > 39
        || !bytes.contains(&b':')
        || !bytes.iter().all(|b| b.is_ascii_hexdigit() || *b == b':')
    {
        return None;
    }
    let v6: Ipv6Addr = value.parse().ok()?;
    Some(match v6.to_ipv4_mapped() {
        Some(v4) => (Family::V4, u128::from(u32::from(v4))),
        None => (Family::V6, u128::from(v6)),
    })
}

/// Java's IPv4 literal: four dot-separated decimal octets, leading zeros allowed, at
/// most 15 characters in all.
fn parse_v4(value: &str) -> Option<u32> {
    if value.len() > 15 {
        return None;
    }
    let mut ip = 0u32;
    let mut parts = 0;
    for part in value.split('.') {
        parts += 1;
        if parts > 4 || part.is_empty() {
            return None;
        }
        // At most 15 characters, so a part has at most 12 digits: no overflow.
        let octet: u64 = part.parse().ok()?;
        ip = (ip << 8) | u32::try_from(octet).ok().filter(|o| *o <= 255)?;
    }
    (parts == 4).then_some(ip)
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
            "an embedded dotted IPv4 is no address for event-ruler"
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
            // IPv4-mapped: an IPv4 address for Java, so /96 is too long.
            "::ffff:0:0/96",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn java_address_literals() {
        let v4 = |s: &str| parse_ip(s).map(|(f, ip)| (f, ip as u32));
        assert_eq!(v4("10.001.2.3"), Some((Family::V4, 0x0a01_0203)));
        assert_eq!(v4("010.0.0.1"), Some((Family::V4, 0x0a00_0001)), "decimal");
        assert_eq!(v4("010.000.000.001"), Some((Family::V4, 0x0a00_0001)));
        assert_eq!(v4("10.00000.000.001"), None, "longer than 15");
        assert_eq!(v4("1.2.3.0256"), None);
        assert_eq!(v4("1.2.3"), None);
        assert_eq!(v4("1.2.3.4.5"), None);
        assert_eq!(v4("1..3.4"), None);
        assert_eq!(v4("::ffff:a00:1"), Some((Family::V4, 0x0a00_0001)));
        assert_eq!(parse_ip("::ffff:10.0.0.1"), None);
        assert_eq!(parse_ip("fe80::1%eth0"), None);
        assert_eq!(parse_ip("12345::"), None);
        assert_eq!(parse_ip("1::2::3"), None);
        assert_eq!(parse_ip("A00:1::"), Some((Family::V6, 0x0a00_0001 << 96)));
        assert_eq!(parse_ip("1:2:3:4:5:6:7::").map(|a| a.0), Some(Family::V6));
    }

    #[test]
    fn families_meet_on_the_first_32_bits() {
        let v4 = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(v4.contains("a00:1::"));
        assert!(!v4.contains("b00::"));
        let all = Cidr::parse("::/0").unwrap();
        assert!(all.contains("0.0.0.1"));
        assert!(all.contains("10.1.2.3"));
        assert!(!all.contains("0.0.0.0"));
        assert!(!all.contains("255.255.255.255"));
        let v6 = Cidr::parse("2000::/3").unwrap();
        assert!(!v6.contains("32.0.0.0"));
        assert!(v6.contains("32.0.0.1"));
        assert!(!v6.contains("63.255.255.255"));
        assert!(
            !Cidr::parse("2001:db8::/32")
                .unwrap()
                .contains("32.1.13.184")
        );
    }

    #[test]
    fn a_plain_address_matches_its_spellings() {
        let one = Cidr::address("2001:db8::1").unwrap();
        assert!(one.contains("2001:0DB8:0::1"));
        assert!(!one.contains("2001:db8::2"));
        let v4 = Cidr::address("10.0.0.1").unwrap();
        assert!(v4.contains("010.0.0.1"));
        assert!(v4.contains("::ffff:a00:1"));
        assert!(Cidr::address("999.1.1.1").is_none());
        assert!(Cidr::address("1.2.3.4 ").is_none());
    }
}
