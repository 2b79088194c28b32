//! Outbound HTTP for `http` and `llm` steps, guarded against SSRF.
//!
//! Tenants choose the URLs, so by default the engine refuses every address that is not
//! on the public internet: loopback, private (RFC 1918, unique-local), link-local
//! (including the cloud metadata address 169.254.169.254), carrier-grade NAT,
//! unspecified, multicast and broadcast. The check runs on the resolved addresses (a
//! custom DNS resolver on the shared client), so a public name that resolves to a
//! private address is refused too, and on IP-literal URLs and on every redirect target.
//! Operators may allow ranges with `AGENTPLANE_EGRESS_ALLOW_CIDRS`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

pub use crate::net::{Cidr, canonical, non_public_reason};

/// The egress policy.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Ranges allowed although not public.
    pub allow: Vec<Cidr>,
}

impl Policy {
    /// `Err(reason)` when `ip` may not be contacted.
    pub fn check(&self, ip: IpAddr) -> Result<(), String> {
        match non_public_reason(ip) {
            Some(_) if self.allow.iter().any(|c| c.contains(ip)) => Ok(()),
            Some(why) => Err(format!(
                "refused to connect to {ip} ({why} address); an operator can allow it with \
                 AGENTPLANE_EGRESS_ALLOW_CIDRS"
            )),
            None => Ok(()),
        }
    }

    /// Checks a URL's host when it is an IP literal (names are checked on resolution).
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), String> {
        match url.host() {
            Some(url::Host::Ipv4(ip)) => self.check(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.check(IpAddr::V6(ip)),
            Some(url::Host::Domain(d)) => {
                if d.eq_ignore_ascii_case("localhost") || d.ends_with(".localhost") {
                    self.check(IpAddr::V4(Ipv4Addr::LOCALHOST))
                } else {
                    Ok(())
                }
            }
            None => Err("the URL has no host".into()),
        }
    }
}

/// A DNS resolver that drops every address the policy refuses.
struct GuardedResolver {
    policy: Policy,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut allowed = Vec::new();
            let mut last = None;
            for a in addrs {
                match policy.check(a.ip()) {
                    Ok(()) => allowed.push(a),
                    Err(e) => last = Some(e),
                }
            }
            if allowed.is_empty() {
                let msg = last.unwrap_or_else(|| format!("{host} did not resolve"));
                return Err(msg.into());
            }
            let iter: reqwest::dns::Addrs = Box::new(allowed.into_iter());
            Ok(iter)
        })
    }
}

/// Builds the shared outbound client: guarded resolver, at most 5 redirects each checked
/// against the policy, no proxy from the environment (it would bypass the check).
pub fn client(policy: &Policy) -> anyhow::Result<reqwest::Client> {
    let redirect_policy = policy.clone();
    Ok(reqwest::Client::builder()
        .dns_resolver(Arc::new(GuardedResolver {
            policy: policy.clone(),
        }))
        .no_proxy()
        .redirect(reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 5 {
                attempt.error("too many redirects")
            } else if let Err(e) = redirect_policy.check_url(attempt.url()) {
                attempt.error(e)
            } else {
                attempt.follow()
            }
        }))
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("agentplane/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// Reads a response body, failing once it exceeds `limit` bytes.
pub async fn read_limited(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(format!("the response is larger than {limit} bytes"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| describe(&e))? {
        if body.len() + chunk.len() > limit {
            return Err(format!("the response is larger than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A reqwest error with its causes, without the URL's query string.
pub fn describe(e: &reqwest::Error) -> String {
    let mut msg = e.without_url_ref().to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

/// Trait-object-friendly `without_url` on a reference.
trait WithoutUrlRef {
    fn without_url_ref(&self) -> String;
}

impl WithoutUrlRef for reqwest::Error {
    fn without_url_ref(&self) -> String {
        let s = self.to_string();
        match self.url() {
            Some(u) => s.replace(
                u.as_str(),
                &format!(
                    "{}://{}{}",
                    u.scheme(),
                    u.host_str().unwrap_or(""),
                    u.path()
                ),
            ),
            None => s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_metadata_addresses_are_refused() {
        let p = Policy::default();
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert!(p.check(ip).is_err(), "{ip} should be refused");
        }
        for ip in ["93.184.216.34", "2606:4700::1111", "8.8.8.8"] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert!(p.check(ip).is_ok(), "{ip} should be allowed");
        }
    }

    #[test]
    fn allow_list_opens_a_range() {
        let p = Policy {
            allow: vec![Cidr::parse("127.0.0.0/8").expect("cidr")],
        };
        assert!(p.check("127.0.0.1".parse().expect("ip")).is_ok());
        assert!(p.check("10.0.0.1".parse().expect("ip")).is_err());
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("::1").is_some_and(|c| c.contains("::1".parse().expect("ip"))));
    }
}
