//! Which addresses are not on the public internet: the one classifier every
//! outbound path uses (webhooks and connectors alike).
//!
//! An address is *special* when it lies in one of the blocks below (from the
//! IANA IPv4 and IPv6 special-purpose address registries, plus multicast and
//! the reserved/deprecated space). Egress refuses special addresses unless
//! the operator allows them. Decisions where the registries leave room:
//!
//! - IPv6 forms that carry an IPv4 address are judged by that address:
//!   IPv4-mapped `::ffff:0:0/96`, IPv4-compatible `::/96` (deprecated),
//!   NAT64 `64:ff9b::/96` and 6to4 `2002::/16`. A translator or relay on
//!   the bus's network would deliver them to the IPv4 address inside, so
//!   `64:ff9b::a9fe:a9fe` is the metadata service, and `64:ff9b::808:808` is
//!   as public as `8.8.8.8`.
//! - Local-use NAT64 `64:ff9b:1::/48` (RFC 8215) and Teredo `2001::/32` are
//!   refused whole: the first is not globally reachable by definition and
//!   each network places the IPv4 address inside it differently; Teredo
//!   hides its client address and routes through a relay, and no real
//!   receiver lives there.
//! - All of IPv6 outside global unicast `2000::/3` is refused (it is special
//!   purpose or unassigned); the blocks inside it that are not public are
//!   listed.
//! - `192.0.0.0/24` is refused whole, including the two anycast addresses
//!   IANA marks global (PCP and TURN anycast are not webhook receivers).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::cidr::Cidr;

/// Why an address is not public: the block it is in and its name, and for
/// an IPv6 address judged by an IPv4 address inside it, that form and address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Special {
    /// The block's name, e.g. `loopback`.
    pub name: &'static str,
    /// The block; `None` for "outside IPv6 global unicast".
    pub block: Option<Cidr>,
    /// The IPv6 form (e.g. `NAT64`) and the IPv4 address it carries.
    pub embedded: Option<(&'static str, Ipv4Addr)>,
}

/// Reads after "`addr` is": `in 127.0.0.0/8 (loopback)`,
/// `NAT64 of 169.254.169.254, in 169.254.0.0/16 (link-local, ...)`,
/// `outside IPv6 global unicast 2000::/3`.
impl fmt::Display for Special {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((form, v4)) = self.embedded {
            write!(f, "{form} of {v4}, ")?;
        }
        match self.block {
            Some(block) => write!(f, "in {block} ({})", self.name),
            None => f.write_str(self.name),
        }
    }
}

/// Special IPv4 blocks. More specific blocks come before the blocks that
/// contain them, so an address is named by its most specific block.
const V4: &[(Cidr, &str)] = &[
    (Cidr::v4(0, 0, 0, 0, 8), "\"this network\""),
    (Cidr::v4(10, 0, 0, 0, 8), "private"),
    (Cidr::v4(100, 64, 0, 0, 10), "shared address space, CGNAT"),
    (Cidr::v4(127, 0, 0, 0, 8), "loopback"),
    (
        Cidr::v4(169, 254, 0, 0, 16),
        "link-local, incl. cloud metadata",
    ),
    (Cidr::v4(172, 16, 0, 0, 12), "private"),
    (Cidr::v4(192, 0, 0, 0, 24), "IETF protocol assignments"),
    (Cidr::v4(192, 0, 2, 0, 24), "documentation, TEST-NET-1"),
    (
        Cidr::v4(192, 88, 99, 0, 24),
        "deprecated 6to4 relay anycast",
    ),
    (Cidr::v4(192, 168, 0, 0, 16), "private"),
    (Cidr::v4(198, 18, 0, 0, 15), "benchmarking"),
    (Cidr::v4(198, 51, 100, 0, 24), "documentation, TEST-NET-2"),
    (Cidr::v4(203, 0, 113, 0, 24), "documentation, TEST-NET-3"),
    (Cidr::v4(224, 0, 0, 0, 4), "multicast"),
    (Cidr::v4(255, 255, 255, 255, 32), "broadcast"),
    (Cidr::v4(240, 0, 0, 0, 4), "reserved"),
];

/// Special IPv6 blocks inside or beside global unicast, checked after the
/// forms that carry an IPv4 address.
const V6: &[(Cidr, &str)] = &[
    (
        Cidr::v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),
        "local-use NAT64",
    ),
    (Cidr::v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64), "discard-only"),
    (Cidr::v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32), "Teredo"),
    (Cidr::v6([0x2001, 2, 0, 0, 0, 0, 0, 0], 48), "benchmarking"),
    (
        Cidr::v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32),
        "documentation",
    ),
    (Cidr::v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20), "documentation"),
    (
        Cidr::v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),
        "unique local, private",
    ),
    (Cidr::v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10), "link-local"),
    (
        Cidr::v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10),
        "deprecated site-local",
    ),
    (Cidr::v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), "multicast"),
];

/// The two IPv6 addresses named before the forms that carry an IPv4
/// address, which would take them for 0.0.0.0 and 0.0.0.1.
const V6_EXACT: &[(Cidr, &str)] = &[
    (Cidr::v6([0; 8], 128), "unspecified"),
    (Cidr::v6([0, 0, 0, 0, 0, 0, 0, 1], 128), "loopback"),
];
const V6_GLOBAL_UNICAST: Cidr = Cidr::v6([0x2000, 0, 0, 0, 0, 0, 0, 0], 3);

/// Why `ip` is not a public address, or `None` when it is.
pub fn special(ip: IpAddr) -> Option<Special> {
    match ip {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

/// Every special block with its name, IPv4 then IPv6 (except the forms
/// judged by the IPv4 address they carry, and the space outside `2000::/3`),
/// for tests that walk them all.
pub fn blocks() -> impl Iterator<Item = (Cidr, &'static str)> {
    V4.iter().chain(V6_EXACT).chain(V6).copied()
}

/// Whether `ip` is on the public internet.
pub fn is_public(ip: IpAddr) -> bool {
    special(ip).is_none()
}

fn special_v4(ip: Ipv4Addr) -> Option<Special> {
    V4.iter()
        .find(|(block, _)| block.contains(IpAddr::V4(ip)))
        .map(|&(block, name)| Special {
            name,
            block: Some(block),
            embedded: None,
        })
}

fn special_v6(ip: Ipv6Addr) -> Option<Special> {
    let addr = IpAddr::V6(ip);
    let listed = |table: &[(Cidr, &'static str)]| {
        table
            .iter()
            .find(|(block, _)| block.contains(addr))
            .map(|&(block, name)| Special {
                name,
                block: Some(block),
                embedded: None,
            })
    };
    if let Some(special) = listed(V6_EXACT) {
        return Some(special);
    }
    if let Some((form, v4)) = embedded_v4(ip) {
        return special_v4(v4).map(|special| Special {
            embedded: Some((form, v4)),
            ..special
        });
    }
    if let Some(special) = listed(V6) {
        return Some(special);
    }
    (!V6_GLOBAL_UNICAST.contains(addr)).then_some(Special {
        name: "outside IPv6 global unicast 2000::/3",
        block: None,
        embedded: None,
    })
}

/// The IPv4 address an IPv6 address stands for, in the forms that carry
/// one at a fixed place: `(form, address)`.
fn embedded_v4(ip: Ipv6Addr) -> Option<(&'static str, Ipv4Addr)> {
    let s = ip.segments();
    let low = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    match s {
        [0, 0, 0, 0, 0, 0xffff, hi, lo] => Some(("IPv4-mapped", low(hi, lo))),
        [0, 0, 0, 0, 0, 0, hi, lo] => Some(("IPv4-compatible", low(hi, lo))),
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(("NAT64", low(hi, lo))),
        [0x2002, hi, lo, ..] => Some(("6to4", low(hi, lo))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every special block with an address at each of its edges, the names
    /// it must be reported under, and the public addresses just outside.
    /// `None` means public.
    const TABLE: &[(&str, Option<&str>)] = &[
        // "this network" 0.0.0.0/8
        ("0.0.0.0", Some("\"this network\"")),
        ("0.255.255.255", Some("\"this network\"")),
        ("1.0.0.0", None),
        // private 10/8
        ("9.255.255.255", None),
        ("10.0.0.0", Some("private")),
        ("10.255.255.255", Some("private")),
        ("11.0.0.0", None),
        // CGNAT 100.64/10 (incl. Alibaba's metadata 100.100.100.200)
        ("100.63.255.255", None),
        ("100.64.0.0", Some("shared address space, CGNAT")),
        ("100.100.100.200", Some("shared address space, CGNAT")),
        ("100.127.255.255", Some("shared address space, CGNAT")),
        ("100.128.0.0", None),
        // loopback 127/8
        ("126.255.255.255", None),
        ("127.0.0.0", Some("loopback")),
        ("127.0.0.1", Some("loopback")),
        ("127.255.255.255", Some("loopback")),
        ("128.0.0.0", None),
        // link-local 169.254/16, incl. the metadata address
        ("169.253.255.255", None),
        ("169.254.0.0", Some("link-local, incl. cloud metadata")),
        ("169.254.169.254", Some("link-local, incl. cloud metadata")),
        ("169.254.255.255", Some("link-local, incl. cloud metadata")),
        ("169.255.0.0", None),
        // private 172.16/12
        ("172.15.255.255", None),
        ("172.16.0.0", Some("private")),
        ("172.31.255.255", Some("private")),
        ("172.32.0.0", None),
        // IETF protocol assignments 192.0.0/24
        ("191.255.255.255", None),
        ("192.0.0.0", Some("IETF protocol assignments")),
        ("192.0.0.8", Some("IETF protocol assignments")),
        ("192.0.0.255", Some("IETF protocol assignments")),
        ("192.0.1.0", None),
        // TEST-NET-1 192.0.2/24
        ("192.0.2.0", Some("documentation, TEST-NET-1")),
        ("192.0.2.255", Some("documentation, TEST-NET-1")),
        ("192.0.3.0", None),
        // deprecated 6to4 relay anycast 192.88.99/24
        ("192.88.98.255", None),
        ("192.88.99.0", Some("deprecated 6to4 relay anycast")),
        ("192.88.99.255", Some("deprecated 6to4 relay anycast")),
        ("192.88.100.0", None),
        // private 192.168/16
        ("192.167.255.255", None),
        ("192.168.0.0", Some("private")),
        ("192.168.255.255", Some("private")),
        ("192.169.0.0", None),
        // benchmarking 198.18/15
        ("198.17.255.255", None),
        ("198.18.0.0", Some("benchmarking")),
        ("198.19.255.255", Some("benchmarking")),
        ("198.20.0.0", None),
        // TEST-NET-2 198.51.100/24
        ("198.51.99.255", None),
        ("198.51.100.0", Some("documentation, TEST-NET-2")),
        ("198.51.100.255", Some("documentation, TEST-NET-2")),
        ("198.51.101.0", None),
        // TEST-NET-3 203.0.113/24
        ("203.0.112.255", None),
        ("203.0.113.0", Some("documentation, TEST-NET-3")),
        ("203.0.113.255", Some("documentation, TEST-NET-3")),
        ("203.0.114.0", None),
        // multicast 224/4
        ("223.255.255.255", None),
        ("224.0.0.0", Some("multicast")),
        ("239.255.255.255", Some("multicast")),
        // reserved 240/4 and broadcast
        ("240.0.0.0", Some("reserved")),
        ("255.255.255.254", Some("reserved")),
        ("255.255.255.255", Some("broadcast")),
        // ordinary public IPv4
        ("8.8.8.8", None),
        ("1.1.1.1", None),
        ("93.184.216.34", None),
        // IPv6 unspecified and loopback
        ("::", Some("unspecified")),
        ("::1", Some("loopback")),
        // IPv4-mapped ::ffff:0:0/96: judged by the IPv4 address
        ("::ffff:127.0.0.1", Some("loopback")),
        (
            "::ffff:169.254.169.254",
            Some("link-local, incl. cloud metadata"),
        ),
        ("::ffff:10.0.0.1", Some("private")),
        ("::ffff:0.0.0.0", Some("\"this network\"")),
        ("::ffff:8.8.8.8", None),
        // IPv4-compatible ::/96 (deprecated): judged by the IPv4 address
        ("::127.0.0.1", Some("loopback")),
        ("::0.0.0.2", Some("\"this network\"")),
        ("::255.255.255.255", Some("broadcast")),
        ("::8.8.8.8", None),
        // NAT64 64:ff9b::/96: judged by the IPv4 address
        (
            "64:ff9b::a9fe:a9fe",
            Some("link-local, incl. cloud metadata"),
        ),
        ("64:ff9b::a00:1", Some("private")),
        ("64:ff9b::7f00:1", Some("loopback")),
        ("64:ff9b::808:808", None),
        ("64:ff9b::ffff:ffff", Some("broadcast")),
        // local-use NAT64 64:ff9b:1::/48: refused whole
        ("64:ff9b:1::", Some("local-use NAT64")),
        ("64:ff9b:1::808:808", Some("local-use NAT64")),
        (
            "64:ff9b:1:ffff:ffff:ffff:ffff:ffff",
            Some("local-use NAT64"),
        ),
        ("64:ff9b:2::", Some("outside IPv6 global unicast 2000::/3")),
        // 6to4 2002::/16: judged by the IPv4 address in bits 16..48
        ("2002:7f00:1::", Some("loopback")),
        (
            "2002:a9fe:a9fe::1",
            Some("link-local, incl. cloud metadata"),
        ),
        ("2002:c0a8:101:1::1", Some("private")),
        ("2002:808:808::1", None),
        ("2002:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some("broadcast")),
        // Teredo 2001::/32: refused whole
        ("2001::", Some("Teredo")),
        ("2001:0:ffff:ffff:ffff:ffff:ffff:ffff", Some("Teredo")),
        ("2001:1::1", None),
        // benchmarking 2001:2::/48
        ("2001:2::", Some("benchmarking")),
        ("2001:2:0:ffff:ffff:ffff:ffff:ffff", Some("benchmarking")),
        ("2001:2:1::", None),
        // documentation 2001:db8::/32 and 3fff::/20
        ("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", None),
        ("2001:db8::", Some("documentation")),
        (
            "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
            Some("documentation"),
        ),
        ("2001:db9::", None),
        ("3ffe:ffff::1", None),
        ("3fff::", Some("documentation")),
        (
            "3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff",
            Some("documentation"),
        ),
        ("3fff:1000::", None),
        // discard-only 100::/64 (outside 2000::/3 in any case)
        ("100::", Some("discard-only")),
        ("100::ffff:ffff:ffff:ffff", Some("discard-only")),
        // unique local fc00::/7
        ("fc00::", Some("unique local, private")),
        ("fd00:ec2::254", Some("unique local, private")),
        (
            "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            Some("unique local, private"),
        ),
        // link-local fe80::/10
        ("fe80::", Some("link-local")),
        (
            "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            Some("link-local"),
        ),
        // site-local fec0::/10 (deprecated)
        ("fec0::", Some("deprecated site-local")),
        (
            "feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            Some("deprecated site-local"),
        ),
        // multicast ff00::/8
        ("ff00::", Some("multicast")),
        ("ff02::1", Some("multicast")),
        ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some("multicast")),
        // outside global unicast 2000::/3
        (
            "1fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            Some("outside IPv6 global unicast 2000::/3"),
        ),
        ("4000::", Some("outside IPv6 global unicast 2000::/3")),
        ("5f00::1", Some("outside IPv6 global unicast 2000::/3")),
        (
            "fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            Some("outside IPv6 global unicast 2000::/3"),
        ),
        // ordinary public IPv6
        ("2000::", None),
        ("2606:4700:4700::1111", None),
        ("2a00:1450:4001::200e", None),
        ("3fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", None),
    ];

    #[test]
    fn every_special_block_at_its_edges() {
        for &(ip, expected) in TABLE {
            let got = special(ip.parse().unwrap()).map(|s| s.name);
            assert_eq!(got, expected, "{ip}");
        }
    }

    #[test]
    fn every_table_block_is_exercised() {
        for (block, name) in blocks() {
            assert!(
                TABLE.iter().any(|(ip, expected)| {
                    *expected == Some(name) && block.contains(ip.parse().unwrap())
                }),
                "no test address in {block} ({name})"
            );
        }
    }

    #[test]
    fn reasons_name_the_block_and_the_embedded_address() {
        let shown = |ip: &str| special(ip.parse().unwrap()).unwrap().to_string();
        assert_eq!(
            shown("169.254.169.254"),
            "in 169.254.0.0/16 (link-local, incl. cloud metadata)"
        );
        assert_eq!(
            shown("64:ff9b::a9fe:a9fe"),
            "NAT64 of 169.254.169.254, in 169.254.0.0/16 (link-local, incl. cloud metadata)"
        );
        assert_eq!(shown("::1"), "in ::1/128 (loopback)");
        assert_eq!(shown("4000::"), "outside IPv6 global unicast 2000::/3");
    }

    /// The addresses the webhook and connector classifiers checked before
    /// they were merged: both lists still hold.
    #[test]
    fn former_classifiers_cases() {
        let public = [
            "8.8.8.8",
            "1.1.1.1",
            "100.128.0.1",
            "172.32.0.1",
            "93.184.216.34",
            "2606:4700:4700::1111",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ];
        let private = [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.100.100.200",
            "0.0.0.0",
            "0.1.2.3",
            "192.0.0.8",
            "192.0.2.1",
            "198.18.0.1",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fd00::1",
            "fd00:ec2::254",
            "fc00::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b::a9fe:a9fe",
        ];
        for ip in public {
            assert!(is_public(ip.parse().unwrap()), "{ip} is public");
        }
        for ip in private {
            assert!(!is_public(ip.parse().unwrap()), "{ip} is private");
        }
    }
}
