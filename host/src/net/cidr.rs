//! Address blocks written as CIDR (`10.0.0.0/8`, `fe80::/10`), or a single
//! address (`127.0.0.1`, `::1`, `[::1]`) meaning a block of one.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// A block of addresses of one family: an address whose bits after the
/// prefix are zero, and the prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    len: u8,
}

/// Why a text is not a [`Cidr`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// Not an IPv4 or IPv6 address.
    #[error("is not an IP address")]
    Address,
    /// The prefix length is not a number, or too long for the family.
    #[error("has a prefix length that is not 0 to {max}")]
    Prefix {
        /// 32 or 128.
        max: u8,
    },
    /// Bits after the prefix are set (`10.1.0.0/8`): probably a typo, so it
    /// is refused rather than silently widened.
    #[error("has bits set after the prefix; the block is {network}")]
    HostBits {
        /// The block the text probably meant.
        network: Cidr,
    },
}

impl Cidr {
    /// The IPv4 block `a.b.c.d/len`, for tables. `len` must be at most 32 and
    /// the bits after it zero.
    pub const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> Self {
        Self {
            network: IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
            len,
        }
    }

    /// The IPv6 block `segments/len`, for tables. `len` must be at most 128
    /// and the bits after it zero.
    pub const fn v6(segments: [u16; 8], len: u8) -> Self {
        let [a, b, c, d, e, f, g, h] = segments;
        Self {
            network: IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h)),
            len,
        }
    }

    /// The block holding only `ip`.
    pub fn single(ip: IpAddr) -> Self {
        Self {
            network: ip,
            len: max_len(ip),
        }
    }

    /// The block's first address.
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// Whether `ip` lies in the block. An address of the other family never
    /// does (an IPv4-mapped IPv6 address is not an IPv4 address here; callers
    /// canonicalise first where they mean the same host).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(ip) & mask == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(ip) & mask == u128::from(net)
            }
            _ => false,
        }
    }
}

fn max_len(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// Parses `addr`, `addr/len`, or an IPv6 address in brackets.
    fn from_str(text: &str) -> Result<Self, CidrError> {
        let (addr, len) = match text.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (text, None),
        };
        let addr = addr
            .strip_prefix('[')
            .and_then(|a| a.strip_suffix(']'))
            .unwrap_or(addr);
        let ip: IpAddr = addr.parse().map_err(|_| CidrError::Address)?;
        let max = max_len(ip);
        let len = match len {
            None => max,
            // Digits only: `u8::from_str` would also take a leading `+`.
            Some(len) if !len.is_empty() && len.bytes().all(|b| b.is_ascii_digit()) => len
                .parse::<u8>()
                .ok()
                .filter(|&len| len <= max)
                .ok_or(CidrError::Prefix { max })?,
            Some(_) => return Err(CidrError::Prefix { max }),
        };
        let network = Self {
            network: mask(ip, len),
            len,
        };
        if network.network == ip {
            Ok(network)
        } else {
            Err(CidrError::HostBits { network })
        }
    }
}

/// `ip` with every bit after the first `len` cleared.
fn mask(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn parses_blocks_and_single_addresses() {
        let cases: &[(&str, &str)] = &[
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("127.0.0.1", "127.0.0.1/32"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("::1", "::1/128"),
            ("[::1]", "::1/128"),
            ("fe80::/10", "fe80::/10"),
            ("::/0", "::/0"),
            ("[2001:db8::]/32", "2001:db8::/32"),
        ];
        for &(text, shown) in cases {
            assert_eq!(text.parse::<Cidr>().unwrap().to_string(), shown, "{text}");
        }
    }

    #[test]
    fn refuses_what_is_not_a_block() {
        let cases: &[(&str, CidrError)] = &[
            ("hooks.internal", CidrError::Address),
            ("10.0.0", CidrError::Address),
            ("", CidrError::Address),
            ("10.0.0.0/33", CidrError::Prefix { max: 32 }),
            ("10.0.0.0/", CidrError::Prefix { max: 32 }),
            ("10.0.0.0/+8", CidrError::Prefix { max: 32 }),
            ("10.0.0.0/x", CidrError::Prefix { max: 32 }),
            ("::/129", CidrError::Prefix { max: 128 }),
            (
                "10.1.0.0/8",
                CidrError::HostBits {
                    network: Cidr::v4(10, 0, 0, 0, 8),
                },
            ),
        ];
        for (text, error) in cases {
            assert_eq!(text.parse::<Cidr>().as_ref(), Err(error), "{text}");
        }
        assert_eq!(
            "10.1.0.0/8".parse::<Cidr>().unwrap_err().to_string(),
            "has bits set after the prefix; the block is 10.0.0.0/8"
        );
    }

    #[test]
    fn containment_at_the_edges() {
        let block = Cidr::v4(100, 64, 0, 0, 10);
        assert!(!block.contains(ip("100.63.255.255")));
        assert!(block.contains(ip("100.64.0.0")));
        assert!(block.contains(ip("100.127.255.255")));
        assert!(!block.contains(ip("100.128.0.0")));
        assert!(!block.contains(ip("::ffff:100.64.0.1")), "other family");
        let all = Cidr::v4(0, 0, 0, 0, 0);
        assert!(all.contains(ip("255.255.255.255")));
        let one = Cidr::single(ip("::1"));
        assert!(one.contains(ip("::1")));
        assert!(!one.contains(ip("::2")));
        let v6 = Cidr::v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7);
        assert!(v6.contains(ip("fdff:ffff::1")));
        assert!(!v6.contains(ip("fe00::")));
        assert!(Cidr::v6([0; 8], 0).contains(ip("ffff::1")));
    }
}
