//! Which IP addresses a fetch may connect to: the special-use registries of RFC 6890 (and their
//! later additions) are refused, unless the operator named the network as allowed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Special-use IPv4 blocks and why each is refused. Order matters only for the reason shown.
const V4_SPECIAL: &[(Ipv4Addr, u8, &str)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8, "a \"this network\" address"),
    (Ipv4Addr::new(10, 0, 0, 0), 8, "a private address"),
    (Ipv4Addr::new(100, 64, 0, 0), 10, "a shared (CGNAT) address"),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "a loopback address"),
    (Ipv4Addr::new(169, 254, 0, 0), 16, "a link-local address"),
    (Ipv4Addr::new(172, 16, 0, 0), 12, "a private address"),
    (
        Ipv4Addr::new(192, 0, 0, 0),
        24,
        "an IETF protocol assignment",
    ),
    (Ipv4Addr::new(192, 0, 2, 0), 24, "a documentation address"),
    (Ipv4Addr::new(192, 31, 196, 0), 24, "an AS112 address"),
    (Ipv4Addr::new(192, 52, 193, 0), 24, "an AMT address"),
    (
        Ipv4Addr::new(192, 88, 99, 0),
        24,
        "a 6to4 relay anycast address",
    ),
    (Ipv4Addr::new(192, 168, 0, 0), 16, "a private address"),
    (Ipv4Addr::new(192, 175, 48, 0), 24, "an AS112 address"),
    (Ipv4Addr::new(198, 18, 0, 0), 15, "a benchmarking address"),
    (
        Ipv4Addr::new(198, 51, 100, 0),
        24,
        "a documentation address",
    ),
    (Ipv4Addr::new(203, 0, 113, 0), 24, "a documentation address"),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "a multicast address"),
    (
        Ipv4Addr::new(240, 0, 0, 0),
        4,
        "a reserved or broadcast address",
    ),
];

/// Special-use IPv6 blocks. Forms that embed or translate to IPv4 (mapped, compatible, NAT64,
/// 6to4, Teredo) are refused whole: what they reach depends on gateways we cannot see.
const V6_SPECIAL: &[(Ipv6Addr, u8, &str)] = &[
    (Ipv6Addr::UNSPECIFIED, 128, "the unspecified address"),
    (Ipv6Addr::LOCALHOST, 128, "a loopback address"),
    (
        Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0),
        96,
        "an IPv4-mapped address",
    ),
    (
        Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0),
        96,
        "an IPv4-compatible address",
    ),
    (
        Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0),
        96,
        "a NAT64 address",
    ),
    (
        Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        48,
        "a local-use NAT64 address",
    ),
    (
        Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0),
        64,
        "a discard-only address",
    ),
    (
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
        32,
        "a documentation address",
    ),
    (
        Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
        23,
        "an IETF protocol assignment (Teredo, ORCHID, benchmarking)",
    ),
    (
        Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0),
        16,
        "a 6to4 address",
    ),
    (
        Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0),
        20,
        "a documentation address",
    ),
    (
        Ipv6Addr::new(0x5f00, 0, 0, 0, 0, 0, 0, 0),
        16,
        "a segment-routing address",
    ),
    (
        Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
        7,
        "a unique-local (private) address",
    ),
    (
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0),
        10,
        "a link-local address",
    ),
    (
        Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0),
        10,
        "a site-local address",
    ),
    (
        Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0),
        8,
        "a multicast address",
    ),
];

/// Addresses that hand out cloud credentials: refused even inside an allowed private network.
const METADATA_ENDPOINTS: &[IpAddr] = &[
    IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
    IpAddr::V4(Ipv4Addr::new(169, 254, 170, 2)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
];

/// Why an address may not be fetched, or `None` when it is public unicast.
pub fn special_use_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => V4_SPECIAL
            .iter()
            .find(|(net, len, _)| in_v4(v4, *net, *len))
            .map(|(_, _, why)| *why),
        IpAddr::V6(v6) => V6_SPECIAL
            .iter()
            .find(|(net, len, _)| in_v6(v6, *net, *len))
            .map(|(_, _, why)| *why)
            // Outside 2000::/3 nothing is assigned for global unicast.
            .or_else(|| {
                (v6.segments()[0] & 0xe000 != 0x2000).then_some("not a global unicast address")
            }),
    }
}

fn in_v4(ip: Ipv4Addr, net: Ipv4Addr, len: u8) -> bool {
    Ipv4Net::new(net, len).is_ok_and(|n| n.contains(&ip))
}

fn in_v6(ip: Ipv6Addr, net: Ipv6Addr, len: u8) -> bool {
    Ipv6Net::new(net, len).is_ok_and(|n| n.contains(&ip))
}

/// The fetch guard's decision on addresses: special-use ones are refused unless allowed by name.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    allowed: Vec<IpNet>,
}

impl AddressPolicy {
    /// Parse the operator's allowed private CIDRs.
    pub fn new(allowed_cidrs: &[String]) -> Result<Self, String> {
        let allowed = allowed_cidrs
            .iter()
            .map(|c| {
                c.trim()
                    .parse::<IpNet>()
                    .map_err(|e| format!("allowedPrivateCidrs entry {c:?} is not a CIDR: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { allowed })
    }

    /// `Err(reason)` when the address must not be connected to.
    pub fn check(&self, ip: IpAddr) -> Result<(), &'static str> {
        let ip = canonical(ip);
        if METADATA_ENDPOINTS.contains(&ip) {
            return Err("a cloud metadata address");
        }
        match special_use_reason(ip) {
            None => Ok(()),
            Some(_) if self.allowed.iter().any(|n| n.contains(&ip)) => Ok(()),
            Some(why) => Err(why),
        }
    }
}

/// The metadata endpoints must be caught in their IPv4-mapped spelling too.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) if METADATA_ENDPOINTS.contains(&IpAddr::V4(v4)) => IpAddr::V4(v4),
            _ => ip,
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(s: &str) -> Option<&'static str> {
        special_use_reason(s.parse().expect("test address"))
    }

    #[test]
    fn every_special_use_block_is_refused_at_both_ends() {
        let table: &[(&str, &str)] = &[
            ("0.0.0.0", "a \"this network\" address"),
            ("0.255.255.255", "a \"this network\" address"),
            ("10.0.0.1", "a private address"),
            ("10.255.255.255", "a private address"),
            ("100.64.0.0", "a shared (CGNAT) address"),
            ("100.127.255.255", "a shared (CGNAT) address"),
            ("127.0.0.1", "a loopback address"),
            ("127.255.255.254", "a loopback address"),
            ("169.254.169.254", "a link-local address"),
            ("169.254.0.1", "a link-local address"),
            ("172.16.0.0", "a private address"),
            ("172.31.255.255", "a private address"),
            ("192.0.0.8", "an IETF protocol assignment"),
            ("192.0.2.1", "a documentation address"),
            ("192.31.196.1", "an AS112 address"),
            ("192.52.193.1", "an AMT address"),
            ("192.88.99.1", "a 6to4 relay anycast address"),
            ("192.168.0.1", "a private address"),
            ("192.168.255.255", "a private address"),
            ("192.175.48.1", "an AS112 address"),
            ("198.18.0.1", "a benchmarking address"),
            ("198.19.255.255", "a benchmarking address"),
            ("198.51.100.7", "a documentation address"),
            ("203.0.113.9", "a documentation address"),
            ("224.0.0.1", "a multicast address"),
            ("239.255.255.250", "a multicast address"),
            ("240.0.0.1", "a reserved or broadcast address"),
            ("255.255.255.255", "a reserved or broadcast address"),
            ("::", "the unspecified address"),
            ("::1", "a loopback address"),
            ("::ffff:127.0.0.1", "an IPv4-mapped address"),
            ("::ffff:8.8.8.8", "an IPv4-mapped address"),
            ("::127.0.0.1", "an IPv4-compatible address"),
            ("64:ff9b::a9fe:a9fe", "a NAT64 address"),
            ("64:ff9b:1::1", "a local-use NAT64 address"),
            ("100::1", "a discard-only address"),
            ("2001:db8::1", "a documentation address"),
            (
                "2001::1",
                "an IETF protocol assignment (Teredo, ORCHID, benchmarking)",
            ),
            (
                "2001:2::1",
                "an IETF protocol assignment (Teredo, ORCHID, benchmarking)",
            ),
            ("2002:7f00:1::1", "a 6to4 address"),
            ("3fff::1", "a documentation address"),
            ("5f00::1", "a segment-routing address"),
            ("fc00::1", "a unique-local (private) address"),
            ("fd00:ec2::254", "a unique-local (private) address"),
            ("fe80::1", "a link-local address"),
            ("febf:ffff::1", "a link-local address"),
            ("fec0::1", "a site-local address"),
            ("ff02::1", "a multicast address"),
            ("4000::1", "not a global unicast address"),
            ("::2", "an IPv4-compatible address"),
        ];
        for (addr, want) in table {
            assert_eq!(reason(addr), Some(*want), "{addr}");
        }
    }

    #[test]
    fn public_unicast_is_allowed() {
        for addr in [
            "1.1.1.1",
            "8.8.8.8",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "2a00:1450:4001::200e",
            "2001:200::1",
        ] {
            assert_eq!(reason(addr), None, "{addr}");
        }
    }

    #[test]
    fn allowed_cidrs_open_named_networks_only() {
        let policy =
            AddressPolicy::new(&["127.0.0.1/32".into(), "10.20.0.0/16".into()]).expect("valid");
        assert_eq!(policy.check("127.0.0.1".parse().expect("ip")), Ok(()));
        assert_eq!(policy.check("10.20.3.4".parse().expect("ip")), Ok(()));
        assert_eq!(
            policy.check("127.0.0.2".parse().expect("ip")),
            Err("a loopback address")
        );
        assert_eq!(
            policy.check("10.21.0.1".parse().expect("ip")),
            Err("a private address")
        );
        assert_eq!(
            policy.check("::1".parse().expect("ip")),
            Err("a loopback address")
        );
    }

    #[test]
    fn metadata_endpoints_stay_refused_inside_allowed_networks() {
        let policy = AddressPolicy::new(&[
            "169.254.0.0/16".into(),
            "fd00::/8".into(),
            "::ffff:0:0/96".into(),
        ])
        .expect("valid");
        for addr in [
            "169.254.169.254",
            "169.254.170.2",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
        ] {
            assert_eq!(
                policy.check(addr.parse().expect("ip")),
                Err("a cloud metadata address"),
                "{addr}"
            );
        }
        assert_eq!(policy.check("169.254.1.1".parse().expect("ip")), Ok(()));
    }

    #[test]
    fn bad_cidrs_are_named_in_the_error() {
        let err = AddressPolicy::new(&["10.0.0.0/33".into()]).expect_err("invalid");
        assert!(
            err.starts_with("allowedPrivateCidrs entry \"10.0.0.0/33\" is not a CIDR"),
            "{err}"
        );
    }
}
