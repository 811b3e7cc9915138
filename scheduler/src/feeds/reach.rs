//! Where a feed may send its requests. An admin sets a feed's `base_url`,
//! and the scheduler fetches it from inside the operator's network: left
//! open, that reaches the cloud metadata service (169.254.169.254), the
//! scheduler's own host and the private network, and hands back what they
//! answer. So a feed reaches public addresses over HTTPS only; private,
//! loopback and link-local ones only where the operator's list allows
//! them. The check is on the address connected to (every address a name
//! resolves to, and literal addresses), not on the name alone.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

/// What feeds may reach beyond the public internet.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FeedReach {
    /// Addresses a feed may reach though they are private, loopback or link-local.
    pub allowed: Vec<IpNet>,
    /// Allow `http://` base URLs (only ever stored for loopback hosts): for tests against local fakes.
    pub plain_http: bool,
}

impl FeedReach {
    /// Whether a feed may connect to `ip`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        self.allowed.iter().any(|net| net.contains(&ip)) || is_public(ip)
    }

    /// Why a request to `url` may not be sent, if it may not.
    pub fn refuses(&self, url: &Url) -> Option<String> {
        if url.scheme() != "https" && !(url.scheme() == "http" && self.plain_http) {
            return Some(format!("{}:// is refused: feeds are fetched over https", url.scheme()));
        }
        let ip = match url.host()? {
            Host::Ipv4(ip) => IpAddr::V4(ip),
            Host::Ipv6(ip) => IpAddr::V6(ip),
            Host::Domain(_) => return None,
        };
        (!self.permits(ip)).then(|| format!("{ip} is not an address feeds may reach (see --feed-allow-addresses)"))
    }
}

/// Resolves names for the feeds' HTTP client, keeping only the addresses
/// the reach permits (a name that resolves to none is an error).
pub struct ReachResolver(pub Arc<FeedReach>);

impl Resolve for ReachResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let reach = self.0.clone();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let permitted: Vec<SocketAddr> = found.iter().copied().filter(|a| reach.permits(a.ip())).collect();
            if permitted.is_empty() && !found.is_empty() {
                let refused = format!(
                    "{} resolves only to addresses feeds may not reach (see --feed-allow-addresses)",
                    name.as_str()
                );
                return Err(refused.into());
            }
            Ok(Box::new(permitted.into_iter()) as Addrs)
        })
    }
}

/// Whether `ip` is an address of the public internet: not loopback,
/// private, link-local, shared (CGNAT), documentation, benchmarking,
/// multicast, broadcast or unspecified; IPv6 forms of IPv4 addresses
/// (mapped, NAT64) are judged as the IPv4 address they carry.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let [a, b, ..] = v6.segments();
            if (a, b) == (0x64, 0xff9b) {
                let octets = v6.octets();
                return is_public_v4(Ipv4Addr::new(octets[12], octets[13], octets[14], octets[15]));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (a & 0xffc0) == 0xfe80 // link-local
                || (a & 0xfe00) == 0xfc00 // unique local
                || (a, b) == (0x2001, 0xdb8)) // documentation
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || a >= 240
        || (a == 100 && (b & 0xc0) == 64) // shared address space (CGNAT)
        || (a == 198 && (b & 0xfe) == 18) // benchmarking
        || (a, b, c) == (192, 0, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_unless_allowed() {
        let reach = FeedReach::default();
        for refused in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "224.0.0.1",
        ] {
            assert!(!reach.permits(refused.parse().unwrap()), "{refused}");
        }
        for public in ["1.1.1.1", "151.101.1.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert!(reach.permits(public.parse().unwrap()), "{public}");
        }
        let corporate = FeedReach { allowed: vec!["10.20.0.0/16".parse().unwrap()], plain_http: false };
        assert!(corporate.permits("10.20.3.4".parse().unwrap()));
        assert!(!corporate.permits("10.21.3.4".parse().unwrap()));
    }

    #[test]
    fn plain_http_and_literal_addresses_are_refused_by_default() {
        let reach = FeedReach::default();
        let url = |s: &str| Url::parse(s).unwrap();
        assert!(reach.refuses(&url("http://127.0.0.1:8000/v3")).unwrap().contains("https"));
        assert!(reach.refuses(&url("https://169.254.169.254/latest")).unwrap().contains("169.254.169.254"));
        assert!(reach.refuses(&url("https://[::1]/x")).is_some());
        assert_eq!(reach.refuses(&url("https://api.electricitymaps.com/v3")), None, "names are checked when resolved");
        let tests = FeedReach { allowed: vec!["127.0.0.0/8".parse().unwrap()], plain_http: true };
        assert_eq!(tests.refuses(&url("http://127.0.0.1:8000/v3")), None);
    }
}
