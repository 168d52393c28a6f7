//! Network interfaces and the scheduler addresses workers are given.

use std::net::{IpAddr, Ipv4Addr};

use crate::error::{Error, Result};

/// The IPv4 address of interface `name` (e.g. `ib0`, `eth0`).
pub fn interface_ipv4(name: &str) -> Result<Ipv4Addr> {
    let mut seen = Vec::new();
    let interfaces = nix::ifaddrs::getifaddrs()
        .map_err(|e| Error::Io { what: "cannot list the network interfaces".into(), source: e.into() })?;
    for ifa in interfaces {
        if let Some(addr) = ifa.address.as_ref().and_then(|a| a.as_sockaddr_in()) {
            if ifa.interface_name == name {
                return Ok(addr.ip());
            }
            seen.push(ifa.interface_name.clone());
        }
    }
    seen.dedup();
    Err(Error::Usage(format!("no IPv4 address on interface `{name}`; interfaces with one: {}", seen.join(", "))))
}

/// Every IPv4 address of this host's interfaces, non-loopback first.
pub fn host_ipv4s() -> Vec<Ipv4Addr> {
    let mut v: Vec<Ipv4Addr> = nix::ifaddrs::getifaddrs()
        .map(|it| it.filter_map(|i| i.address.and_then(|a| a.as_sockaddr_in().map(|s| s.ip()))).collect())
        .unwrap_or_default();
    v.sort_by_key(|ip| (ip.is_loopback(), *ip));
    v.dedup();
    v
}

/// The addresses workers and clients should try, best first, for a scheduler bound to `host`.
pub fn candidate_addresses(host: &str, port: &str) -> Vec<String> {
    candidate_addresses_on(rdask_transport::Scheme::Tcp, host, port)
}

/// [`candidate_addresses`] for a scheduler listening with transport `scheme`.
pub fn candidate_addresses_on(scheme: rdask_transport::Scheme, host: &str, port: &str) -> Vec<String> {
    let unspecified = matches!(host.parse::<IpAddr>(), Ok(ip) if ip.is_unspecified());
    let addr = |h: &str| rdask_transport::Address { scheme, host_port: format!("{h}:{port}") }.to_string();
    if unspecified {
        let mut v: Vec<String> = host_ipv4s().iter().map(|ip| addr(&ip.to_string())).collect();
        if v.is_empty() {
            v.push(addr("127.0.0.1"));
        }
        v
    } else {
        vec![addr(&bracket(host))]
    }
}

/// Puts an IPv6 literal in brackets, as `host:port` needs.
pub fn bracket(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_an_interface_and_comes_last() {
        assert_eq!(interface_ipv4("lo").unwrap(), Ipv4Addr::LOCALHOST);
        let err = interface_ipv4("no-such-if0").unwrap_err().to_string();
        assert!(err.contains("no-such-if0") && err.contains("lo"), "{err}");
        let c = candidate_addresses("0.0.0.0", "99");
        assert_eq!(c.last().unwrap(), "tcp://127.0.0.1:99");
        assert_eq!(candidate_addresses("10.1.2.3", "5"), vec!["tcp://10.1.2.3:5"]);
        assert_eq!(candidate_addresses("::1", "5"), vec!["tcp://[::1]:5"]);
        assert_eq!(candidate_addresses_on(rdask_transport::Scheme::Ucx, "10.1.2.3", "5"), vec!["ucx://10.1.2.3:5"]);
    }
}
