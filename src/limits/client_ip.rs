//! Which address a request comes from. `X-Forwarded-For` is believed only
//! when the TCP peer is a configured trusted proxy; then the client is the
//! right-most address in the chain that is not itself a trusted proxy.

use std::net::IpAddr;
use std::str::FromStr;

use axum::http::HeaderMap;

/// An address block, `10.0.0.0/8` or a single address (`/32`, `/128` implied).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl FromStr for IpNet {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?} has a prefix outside 0-{max}"))?,
            None => max,
        };
        Ok(IpNet { addr, prefix })
    }
}

/// The `TRUSTED_PROXIES` list: comma-separated addresses or CIDR blocks;
/// empty means no proxy is trusted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies(pub Vec<IpNet>);

impl FromStr for TrustedProxies {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(IpNet::from_str)
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedProxies)
    }
}

impl IpNet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (canonical(self.addr), ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// IPv4-mapped IPv6 addresses compare as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The client address for rate limiting, audit rows and logs.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(ip));
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
    fn cidr_blocks_contain_their_addresses() {
        let net: IpNet = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains("10.1.2.3".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.0.0.1".parse().unwrap()));
        let one: IpNet = "127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!("nonsense".parse::<IpNet>().is_err());
    }

    #[test]
    fn trusted_proxy_lists_parse_and_may_be_empty() {
        assert_eq!("".parse::<TrustedProxies>().unwrap().0.len(), 0);
        assert_eq!(
            " 10.0.0.0/8, ::1 ,"
                .parse::<TrustedProxies>()
                .unwrap()
                .0
                .len(),
            2
        );
        assert!("10.0.0.0/8,bogus".parse::<TrustedProxies>().is_err());
    }

    #[test]
    fn forwarded_for_is_ignored_from_untrusted_peers() {
        let peer = "203.0.113.9".parse().unwrap();
        let ip = client_ip(peer, &headers("1.2.3.4"), &[]);
        assert_eq!(ip, peer);
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer = "10.0.0.5".parse().unwrap();
        let ip = client_ip(peer, &headers("6.6.6.6, 1.2.3.4, 10.0.0.7"), &trusted);
        assert_eq!(ip, "1.2.3.4".parse::<IpAddr>().unwrap());
        let no_header = client_ip(peer, &HeaderMap::new(), &trusted);
        assert_eq!(no_header, peer);
    }
}
