//! The address a request comes from, for the limits keyed by it (sign-in failures, rate limits): the
//! connection's peer; or, when the peer is one of the configured `trustedProxies`, the nearest address in
//! `X-Forwarded-For` that is not a trusted proxy. Each proxy appends the address it received the request from,
//! so the entries right of the first untrusted one were written by proxies we trust, and everything left of it
//! may be the client's invention. Without `trustedProxies` the header is never read.
//!
//! Where the address came from ([`Origin`]) decides whether its network is the client's own
//! ([`ClientAddress::is_own_network`]): an ingress or a NAT in front of the server without `trustedProxies`
//! makes every client one private peer address, and a cap per network would then be one cap for everybody.

use std::net::{IpAddr, Ipv6Addr};

use axum::http::HeaderMap;
use ipnet::IpNet;

/// Where a request's client address came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The connection's peer, which is not a trusted proxy.
    Peer,
    /// `X-Forwarded-For` as written by trusted proxies: the nearest entry that is not one.
    Forwarded,
    /// A trusted proxy stands for the client: the header was missing, held something that is not an address,
    /// or named trusted proxies only.
    Proxy,
}

/// A request's client address and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress {
    pub address: IpAddr,
    pub origin: Origin,
}

impl ClientAddress {
    /// Whether the address's network ([`network`]) is the client's own rather than one it shares with every
    /// client of a proxy or NAT in front of the server: an address a trusted proxy forwarded, or a peer whose
    /// address is public. A private, loopback, link-local or unique-local peer with no trusted proxy in between
    /// is an ingress, a sidecar or a NAT gateway standing for everyone behind it; so is a trusted proxy that
    /// forwarded no client. A cap per network then applies to its own networks only.
    pub fn is_own_network(&self) -> bool {
        match self.origin {
            Origin::Forwarded => true,
            Origin::Peer => !is_shared_range(self.address),
            Origin::Proxy => false,
        }
    }
}

/// Whether `address` is in a range a NAT or a cluster network puts many hosts behind: IPv4 private
/// (RFC 1918), shared (RFC 6598, carrier-grade NAT and some clusters' pod networks), loopback, link-local or
/// unspecified; IPv6 loopback, unspecified, unique-local (fc00::/7) or link-local (fe80::/10).
pub fn is_shared_range(address: IpAddr) -> bool {
    match address.to_canonical() {
        IpAddr::V4(a) => {
            let [first, second, ..] = a.octets();
            a.is_private()
                || a.is_loopback()
                || a.is_link_local()
                || a.is_unspecified()
                || (first == 100 && second & 0xc0 == 64)
        }
        IpAddr::V6(a) => {
            a.is_loopback()
                || a.is_unspecified()
                || a.is_unique_local()
                || a.is_unicast_link_local()
        }
    }
}

/// The request's client address; `None` when there is no connection (the router driven in-process).
pub fn client_address(
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    client_origin(peer, headers, trusted).map(|c| c.address)
}

/// The request's client address and where it came from; `None` when there is no connection.
pub fn client_origin(
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    trusted: &[IpNet],
) -> Option<ClientAddress> {
    let peer = peer?.to_canonical();
    let is_trusted = |a: &IpAddr| trusted.iter().any(|n| n.contains(a));
    let found = |address, origin| Some(ClientAddress { address, origin });
    if !is_trusted(&peer) {
        return found(peer, Origin::Peer);
    }
    // Several header lines are one list, in order (RFC 9110 §5.3).
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut nearest = peer;
    for hop in hops.iter().rev() {
        // An entry that is not an address was written by a trusted proxy (the client's own entries are never
        // reached): nothing further left can be told apart, so the last trusted hop stands for the client.
        let Ok(address) = hop.parse::<IpAddr>().map(|a| a.to_canonical()) else {
            return found(nearest, Origin::Proxy);
        };
        if !is_trusted(&address) {
            return found(address, Origin::Forwarded);
        }
        nearest = address;
    }
    found(nearest, Origin::Proxy)
}

/// The network an address stands for in a rate limit: the address itself for IPv4, its /64 for IPv6 (one host
/// commonly holds a whole /64, so counting its addresses one by one would give it endless buckets).
pub fn network(address: IpAddr) -> IpAddr {
    network_within(address, 64)
}

/// The network an address stands for in a budget one party could use up for everyone (Dynamic Client
/// Registration's hourly count): the address for IPv4, its /48 for IPv6, the site prefix a subscriber or a
/// tunnel broker commonly hands out whole (a /64 would give one home line 256 to 65,536 shares).
pub fn site(address: IpAddr) -> IpAddr {
    network_within(address, 48)
}

fn network_within(address: IpAddr, v6_prefix_bits: u32) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let host_bits = 128 - v6_prefix_bits;
            let prefix = u128::from(v6) & !((1u128 << host_bits) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn client_address_table() {
        // (peer, X-Forwarded-For lines, trusted networks, expected)
        let cases: Vec<(&str, &[&str], &[&str], &str)> = vec![
            ("192.0.2.9", &[], &[], "192.0.2.9"),
            (
                "192.0.2.9",
                &["198.51.100.1"],
                &[],
                "192.0.2.9", // no trusted proxies: the header is never read
            ),
            (
                "192.0.2.9",
                &["198.51.100.1"],
                &["10.0.0.0/8"],
                "192.0.2.9", // a peer that is not a trusted proxy cannot speak for others
            ),
            (
                "10.1.2.3",
                &["198.51.100.1"],
                &["10.0.0.0/8"],
                "198.51.100.1",
            ),
            (
                "10.1.2.3",
                &["6.6.6.6, 198.51.100.1"],
                &["10.0.0.0/8"],
                "198.51.100.1", // the client prepended a made-up entry: ignored
            ),
            (
                "10.1.2.3",
                &["6.6.6.6", "198.51.100.1, 10.9.9.9"],
                &["10.0.0.0/8"],
                "198.51.100.1", // two proxies, and two header lines read as one list
            ),
            (
                "10.1.2.3",
                &["10.7.7.7, 10.9.9.9"],
                &["10.0.0.0/8"],
                "10.7.7.7", // every hop trusted: the farthest
            ),
            ("10.1.2.3", &[], &["10.0.0.0/8"], "10.1.2.3"),
            (
                "10.1.2.3",
                &["198.51.100.1, unknown"],
                &["10.0.0.0/8"],
                "10.1.2.3", // a proxy wrote something that is not an address
            ),
            (
                "::ffff:10.1.2.3",
                &["2001:db8::7"],
                &["10.0.0.0/8"],
                "2001:db8::7", // a dual-stack listener sees IPv4 peers as mapped addresses
            ),
            ("::ffff:192.0.2.9", &[], &[], "192.0.2.9"),
        ];
        for (peer, lines, trusted, expected) in cases {
            let mut headers = HeaderMap::new();
            for line in lines {
                headers.append("x-forwarded-for", HeaderValue::from_str(line).unwrap());
            }
            let got = client_address(Some(peer.parse().unwrap()), &headers, &nets(trusted));
            assert_eq!(
                got,
                Some(expected.parse().unwrap()),
                "{peer} {lines:?} {trusted:?}"
            );
        }
        assert_eq!(client_address(None, &HeaderMap::new(), &[]), None);
    }

    #[test]
    fn origins_table() {
        // (peer, X-Forwarded-For lines, trusted networks, expected origin)
        let cases: Vec<(&str, &[&str], &[&str], Origin)> = vec![
            ("10.1.2.3", &[], &[], Origin::Peer),
            ("10.1.2.3", &["198.51.100.1"], &[], Origin::Peer),
            (
                "10.1.2.3",
                &["198.51.100.1"],
                &["10.0.0.0/8"],
                Origin::Forwarded,
            ),
            ("10.1.2.3", &["10.7.7.7"], &["10.0.0.0/8"], Origin::Proxy),
            ("10.1.2.3", &[], &["10.0.0.0/8"], Origin::Proxy),
            (
                "10.1.2.3",
                &["198.51.100.1, unknown"],
                &["10.0.0.0/8"],
                Origin::Proxy,
            ),
        ];
        for (peer, lines, trusted, expected) in cases {
            let mut headers = HeaderMap::new();
            for line in lines {
                headers.append("x-forwarded-for", HeaderValue::from_str(line).unwrap());
            }
            let got = client_origin(Some(peer.parse().unwrap()), &headers, &nets(trusted));
            assert_eq!(
                got.map(|c| c.origin),
                Some(expected),
                "{peer} {lines:?} {trusted:?}"
            );
        }
    }

    #[test]
    fn own_network_table() {
        use Origin::*;
        // (address, origin, whether its network is the client's own)
        let cases = [
            // A peer with a public address is the client, or a NAT of its own side.
            ("192.0.2.9", Peer, true),
            ("8.8.8.8", Peer, true),
            ("100.63.255.255", Peer, true),
            ("100.128.0.1", Peer, true),
            ("2001:db8:1:2::1", Peer, true),
            ("::ffff:192.0.2.9", Peer, true),
            // A private peer with no trusted proxy: an ingress, a sidecar or a NAT gateway for everyone.
            ("10.1.2.3", Peer, false),
            ("172.16.0.1", Peer, false),
            ("172.31.255.255", Peer, false),
            ("192.168.1.1", Peer, false),
            ("100.64.0.1", Peer, false),
            ("100.127.255.255", Peer, false),
            ("127.0.0.1", Peer, false),
            ("169.254.1.1", Peer, false),
            ("0.0.0.0", Peer, false),
            ("::1", Peer, false),
            ("::", Peer, false),
            ("fd00::1", Peer, false),
            ("fc00::1", Peer, false),
            ("fe80::1", Peer, false),
            ("::ffff:10.1.2.3", Peer, false),
            ("::ffff:127.0.0.1", Peer, false),
            // Forwarded by a trusted proxy: the client's, private or not (an internal network's own hosts).
            ("198.51.100.1", Forwarded, true),
            ("10.9.9.9", Forwarded, true),
            ("fd00::1", Forwarded, true),
            // A trusted proxy standing for clients it did not name: theirs, whatever its address.
            ("10.1.2.3", Proxy, false),
            ("192.0.2.9", Proxy, false),
        ];
        for (address, origin, own) in cases {
            let client = ClientAddress {
                address: address.parse().unwrap(),
                origin,
            };
            assert_eq!(client.is_own_network(), own, "{address} {origin:?}");
        }
    }

    #[test]
    fn networks_are_addresses_and_ipv6_slash_64s_sites_slash_48s() {
        for (address, network_of, site_of) in [
            ("192.0.2.7", "192.0.2.7", "192.0.2.7"),
            ("::ffff:192.0.2.7", "192.0.2.7", "192.0.2.7"),
            ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::", "2001:db8:1::"),
            (
                "2001:db8:1:2:bbbb:cccc:dddd:eeee",
                "2001:db8:1:2::",
                "2001:db8:1::",
            ),
            ("2001:db8:1:3::1", "2001:db8:1:3::", "2001:db8:1::"),
            ("2001:db8:2:3::1", "2001:db8:2:3::", "2001:db8:2::"),
        ] {
            let address: IpAddr = address.parse().unwrap();
            assert_eq!(
                (network(address), site(address)),
                (
                    network_of.parse::<IpAddr>().unwrap(),
                    site_of.parse::<IpAddr>().unwrap()
                ),
                "{address}"
            );
        }
    }
}
