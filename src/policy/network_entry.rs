//! One `network.allowlist` entry: an IP network the kernel can match, or a
//! host name only an L7 gateway can.
//!
//! Why this exists: the kernel's connect hooks see addresses, never names, so
//! the two kinds must be told apart at parse time and reported differently —
//! an address becomes an egress rule, a name is kept and reported as not
//! lowered, and `*` (every host) lifts the egress restriction. Anything
//! that looks like an address but is not a valid one
//! (`10.0.0.256`, `10.0.0.1/8`, port 0) is refused rather than read as a name.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Deserializer};

use crate::ruleset::{EgressRule, IpCidr};

/// A parsed allowlist entry.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NetworkEntry {
    /// `10.0.0.0/8`, `192.0.2.10:443`, `[2001:db8::]/32`, `[2001:db8::1]:443`.
    Address(EgressRule),
    /// `api.example.com`, `*.example.com:443`.
    Host { pattern: String, port: Option<u16> },
    /// `*`: every host, so egress is not restricted at all.
    AnyHost,
}

impl NetworkEntry {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err("network entry is empty".into());
        }
        if raw == "*" {
            return Ok(NetworkEntry::AnyHost);
        }
        if let Some(port) = raw.strip_prefix("*:") {
            return Err(format!(
                "`{raw}`: `*` takes no port; for every address on port {port} write 0.0.0.0/0:{port} and [::]/0:{port}"
            ));
        }
        if let Some(rest) = raw.strip_prefix('[') {
            return parse_bracketed_v6(raw, rest).map(NetworkEntry::Address);
        }
        if raw.matches(':').count() >= 2 {
            // Bare IPv6: a port would be ambiguous, so it needs brackets.
            let (addr, prefix) = split_prefix(raw)?;
            let addr: Ipv6Addr = addr.parse().map_err(|_| {
                format!("`{raw}` is not a valid IPv6 address or network (write `[addr]:port` for a port)")
            })?;
            let net = unmap_v4(cidr(IpAddr::V6(addr), prefix)?);
            return Ok(NetworkEntry::Address(EgressRule { net, port: None }));
        }
        let (host, port) = match raw.rsplit_once(':') {
            Some((host, port)) => (host, Some(parse_port(port)?)),
            None => (raw, None),
        };
        let (host_part, prefix) = split_prefix(host)?;
        if host_part.chars().all(|c| c.is_ascii_digit() || c == '.') {
            let addr: Ipv4Addr = host_part
                .parse()
                .map_err(|_| format!("`{host_part}` is not a valid IPv4 address"))?;
            let net = cidr(IpAddr::V4(addr), prefix)?;
            return Ok(NetworkEntry::Address(EgressRule { net, port }));
        }
        if prefix.is_some() {
            return Err(format!("`{host}`: a host name cannot have a /prefix"));
        }
        validate_host_pattern(host_part)?;
        Ok(NetworkEntry::Host {
            pattern: host_part.to_ascii_lowercase(),
            port,
        })
    }
}

impl fmt::Display for NetworkEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetworkEntry::Address(rule) => rule.fmt(f),
            NetworkEntry::AnyHost => f.write_str("*"),
            NetworkEntry::Host {
                pattern,
                port: None,
            } => f.write_str(pattern),
            NetworkEntry::Host {
                pattern,
                port: Some(port),
            } => write!(f, "{pattern}:{port}"),
        }
    }
}

impl<'de> Deserialize<'de> for NetworkEntry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        super::leaf::parse_str(
            deserializer,
            "an IP address, network or host name",
            NetworkEntry::parse,
        )
    }
}

/// An IPv4-mapped IPv6 network (`::ffff:a.b.c.d/len`, len >= 96) as the
/// IPv4 network it reaches: the probe judges mapped destinations against
/// the IPv4 rules, so the rule must live there to mean what it says.
fn unmap_v4(net: IpCidr) -> IpCidr {
    match net.addr() {
        IpAddr::V6(v6) if net.prefix_len() >= 96 => match v6.to_ipv4_mapped() {
            Some(v4) => IpCidr::new(IpAddr::V4(v4), net.prefix_len() - 96).unwrap_or(net),
            None => net,
        },
        _ => net,
    }
}

/// `[v6]`, `[v6]/len`, `[v6]:port`, `[v6/len]`, `[v6]/len:port`.
fn parse_bracketed_v6(raw: &str, after_bracket: &str) -> Result<EgressRule, String> {
    let (inside, after) = after_bracket
        .split_once(']')
        .ok_or_else(|| format!("`{raw}`: missing `]`"))?;
    let (addr, mut prefix) = split_prefix(inside)?;
    let mut rest = after;
    if let Some(after_slash) = rest.strip_prefix('/') {
        if prefix.is_some() {
            return Err(format!("`{raw}`: two prefix lengths"));
        }
        let (len, tail) = match after_slash.split_once(':') {
            Some((len, port)) => (len, Some(port)),
            None => (after_slash, None),
        };
        prefix = Some(parse_prefix_len(len)?);
        rest = tail.map_or("", |_| &after_slash[len.len()..]);
    }
    let port = match rest {
        "" => None,
        tail => match tail.strip_prefix(':') {
            Some(port) => Some(parse_port(port)?),
            None => return Err(format!("`{raw}`: unexpected `{tail}` after `]`")),
        },
    };
    let addr: Ipv6Addr = addr
        .parse()
        .map_err(|_| format!("`{addr}` is not a valid IPv6 address"))?;
    Ok(EgressRule {
        net: unmap_v4(cidr(IpAddr::V6(addr), prefix)?),
        port,
    })
}

fn split_prefix(text: &str) -> Result<(&str, Option<u8>), String> {
    match text.split_once('/') {
        Some((addr, len)) => Ok((addr, Some(parse_prefix_len(len)?))),
        None => Ok((text, None)),
    }
}

fn parse_prefix_len(text: &str) -> Result<u8, String> {
    text.parse::<u8>()
        .map_err(|_| format!("`/{text}` is not a valid prefix length"))
}

fn cidr(addr: IpAddr, prefix: Option<u8>) -> Result<IpCidr, String> {
    match prefix {
        Some(len) => IpCidr::new(addr, len),
        None => Ok(IpCidr::host(addr)),
    }
}

fn parse_port(text: &str) -> Result<u16, String> {
    match text.parse::<u32>() {
        Ok(port @ 1..=65535) => Ok(port as u16),
        Ok(port) => Err(format!("port {port} is out of range (1-65535)")),
        Err(_) => Err(format!("`{text}` is not a valid port")),
    }
}

/// DNS host names (RFC 1123 labels, plus `_`, which DNS names carry, e.g.
/// `_acme.example.com`), optionally starting with one `*.` wildcard label.
fn validate_host_pattern(host: &str) -> Result<(), String> {
    let bare = host.strip_prefix("*.").unwrap_or(host);
    let valid_label = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if host.len() > 253 || !bare.split('.').all(valid_label) {
        return Err(format!(
            "`{host}` is not an IP address, a network or a host name (a `*.` prefix is the only wildcard)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(raw: &str) -> String {
        match NetworkEntry::parse(raw).unwrap() {
            NetworkEntry::Address(rule) => rule.to_string(),
            other => panic!("{raw} parsed as {other:?}"),
        }
    }

    #[test]
    fn addresses_networks_and_ports_parse() {
        assert_eq!(addr("10.0.0.0/8"), "10.0.0.0/8");
        assert_eq!(addr("192.0.2.10:443"), "192.0.2.10/32:443");
        assert_eq!(addr("[2001:db8::]/32"), "2001:db8::/32");
        assert_eq!(addr("[2001:db8::1]:443"), "[2001:db8::1/128]:443");
        assert_eq!(addr("[2001:db8::]/32:443"), "[2001:db8::/32]:443");
        assert_eq!(addr("::1"), "::1/128");
        assert_eq!(addr("2001:db8::/32"), "2001:db8::/32");
        assert_eq!(addr("127.0.0.1"), "127.0.0.1/32");
    }

    #[test]
    fn ipv4_mapped_ipv6_entries_become_ipv4_rules() {
        assert_eq!(addr("[::ffff:127.0.0.1]:8080"), "127.0.0.1/32:8080");
        assert_eq!(addr("::ffff:10.0.0.0/104"), "10.0.0.0/8");
        assert_eq!(addr("::/0"), "::/0");
    }

    #[test]
    fn host_names_and_globs_are_kept_as_hosts() {
        assert_eq!(
            NetworkEntry::parse("*.GitHub.com:443").unwrap(),
            NetworkEntry::Host {
                pattern: "*.github.com".into(),
                port: Some(443)
            }
        );
        assert!(matches!(
            NetworkEntry::parse("localhost").unwrap(),
            NetworkEntry::Host { .. }
        ));
    }

    #[test]
    fn malformed_entries_are_refused() {
        for bad in [
            "10.0.0.256",
            "10.0.0.1/8",
            "10.0.0.0/33",
            "1.2.3.4:0",
            "1.2.3.4:70000",
            "[2001:db8::1",
            "[2001:db8::1]x",
            "2001:db8::zz",
            "a..b",
            "foo*.example.com",
            "-bad.example.com",
            "example.com/24",
            "",
            "1.2.3.4:http",
        ] {
            assert!(NetworkEntry::parse(bad).is_err(), "{bad} was accepted");
        }
    }
}
