//! Which address a request comes from. `X-Forwarded-For` is believed only
//! when the TCP peer is a configured trusted proxy; then the client is the
//! right-most address in the chain that is not itself a trusted proxy.

use std::net::IpAddr;

use axum::http::HeaderMap;

/// Which TCP peers are proxies whose `X-Forwarded-For` is believed
/// (`TRUSTED_PROXIES`, turned into this by `app.rs`).
pub type Trusted = dyn Fn(IpAddr) -> bool + Send + Sync;

/// IPv4-mapped IPv6 addresses compare as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The client address for rate limiting, audit rows and logs.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &Trusted) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted(canonical(ip));
    if !is_trusted(peer) {
        return canonical(peer);
    }
    let chain: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|hop| hop.trim().parse::<IpAddr>().ok())
        .collect();
    chain
        .into_iter()
        .rev()
        .find(|ip| !is_trusted(*ip))
        .map(canonical)
        .unwrap_or(canonical(peer))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", xff.parse().unwrap());
        h
    }

    #[test]
    fn forwarded_for_is_ignored_from_untrusted_peers() {
        let peer = "203.0.113.9".parse().unwrap();
        let ip = client_ip(peer, &headers("1.2.3.4"), &|_| false);
        assert_eq!(ip, peer);
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let trusted = |ip: IpAddr| matches!(ip, IpAddr::V4(v4) if v4.octets()[0] == 10);
        let peer = "10.0.0.5".parse().unwrap();
        let ip = client_ip(peer, &headers("6.6.6.6, 1.2.3.4, 10.0.0.7"), &trusted);
        assert_eq!(ip, "1.2.3.4".parse::<IpAddr>().unwrap());
        let no_header = client_ip(peer, &HeaderMap::new(), &trusted);
        assert_eq!(no_header, peer);
    }
}
