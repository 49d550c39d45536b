//! The address a request comes from, for the limits keyed by it (sign-in failures, rate limits): the
//! connection's peer; or, when the peer is one of the configured `trustedProxies`, the nearest address in
//! `X-Forwarded-For` that is not a trusted proxy. Each proxy appends the address it received the request from,
//! so the entries right of the first untrusted one were written by proxies we trust, and everything left of it
//! may be the client's invention. Without `trustedProxies` the header is never read.

use std::net::{IpAddr, Ipv6Addr};

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The request's client address; `None` when there is no connection (the router driven in-process).
pub fn client_address(
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    let peer = peer?.to_canonical();
    let is_trusted = |a: &IpAddr| trusted.iter().any(|n| n.contains(a));
    if !is_trusted(&peer) {
        return Some(peer);
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
            return Some(nearest);
        };
        if !is_trusted(&address) {
            return Some(address);
        }
        nearest = address;
    }
    Some(nearest)
}

/// The network an address stands for in a rate limit: the address itself for IPv4, its /64 for IPv6 (one host
/// commonly holds a whole /64, so counting its addresses one by one would give it endless buckets).
pub fn network(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
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
    fn networks_are_addresses_and_ipv6_slash_64s() {
        for (address, network_of) in [
            ("192.0.2.7", "192.0.2.7"),
            ("::ffff:192.0.2.7", "192.0.2.7"),
            ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::"),
            ("2001:db8:1:2:bbbb:cccc:dddd:eeee", "2001:db8:1:2::"),
            ("2001:db8:1:3::1", "2001:db8:1:3::"),
        ] {
            assert_eq!(
                network(address.parse().unwrap()),
                network_of.parse::<IpAddr>().unwrap(),
                "{address}"
            );
        }
    }
}
