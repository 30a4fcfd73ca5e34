//! The outbound address guard: webhook deliveries never reach private, loopback, link-local,
//! unique-local, shared (CGNAT) or cloud metadata addresses, unless `webhooks.allow_list`
//! names them.
//!
//! The guard checks the addresses the host name resolves to, and the sender connects to
//! exactly those addresses, never resolving the name a second time. A name that resolves to a
//! public address when the subscription is written and to a private one later (DNS
//! rebinding) is therefore caught on the attempt that would have reached the private address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use fieldforce_runtime::config::AllowedEndpoint;

/// Host names of cloud metadata services, rejected before any lookup.
const METADATA_HOSTS: [&str; 2] = ["metadata.google.internal", "metadata"];

/// The kind of non-public address an address is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    /// `0.0.0.0/8`, `::`: "this host".
    Unspecified,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// `10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16`.
    Private,
    /// `100.64.0.0/10`, shared address space of carrier-grade NAT.
    SharedCgnat,
    /// `169.254.0.0/16`, `fe80::/10`.
    LinkLocal,
    /// `fc00::/7`.
    UniqueLocal,
    /// `169.254.169.254` and `fd00:ec2::254`: instance metadata of AWS, GCP and Azure.
    CloudMetadata,
    /// Multicast, broadcast and the reserved `240.0.0.0/4`.
    NotUnicast,
}

impl AddressClass {
    /// Returns the class name used in rejection messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::Loopback => "loopback",
            Self::Private => "private",
            Self::SharedCgnat => "shared (CGNAT)",
            Self::LinkLocal => "link-local",
            Self::UniqueLocal => "unique-local",
            Self::CloudMetadata => "cloud metadata",
            Self::NotUnicast => "not unicast",
        }
    }
}

/// Returns the class of a non-public address, or `None` for a public one. IPv4 addresses
/// embedded in IPv6 (`::ffff:a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`) are judged as IPv4.
pub fn classify(address: IpAddr) -> Option<AddressClass> {
    match address {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(address: Ipv4Addr) -> Option<AddressClass> {
    let [a, b, _, _] = address.octets();
    if address == Ipv4Addr::new(169, 254, 169, 254) {
        Some(AddressClass::CloudMetadata)
    } else if a == 0 {
        Some(AddressClass::Unspecified)
    } else if address.is_loopback() {
        Some(AddressClass::Loopback)
    } else if address.is_private() {
        Some(AddressClass::Private)
    } else if a == 100 && (64..128).contains(&b) {
        Some(AddressClass::SharedCgnat)
    } else if address.is_link_local() {
        Some(AddressClass::LinkLocal)
    } else if address.is_multicast() || address.is_broadcast() || a >= 240 {
        Some(AddressClass::NotUnicast)
    } else {
        None
    }
}

fn classify_v6(address: Ipv6Addr) -> Option<AddressClass> {
    if let Some(v4) = address.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    let segments = address.segments();
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [a, b, c, d] = address.octets()[12..] else {
            unreachable!("an IPv6 address has 16 octets")
        };
        return classify_v4(Ipv4Addr::new(a, b, c, d));
    }
    if address == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        Some(AddressClass::CloudMetadata)
    } else if address.is_unspecified() {
        Some(AddressClass::Unspecified)
    } else if address.is_loopback() {
        Some(AddressClass::Loopback)
    } else if segments[0] & 0xffc0 == 0xfe80 {
        Some(AddressClass::LinkLocal)
    } else if segments[0] & 0xfe00 == 0xfc00 {
        Some(AddressClass::UniqueLocal)
    } else if address.is_multicast() {
        Some(AddressClass::NotUnicast)
    } else {
        None
    }
}

/// A rejected endpoint: the delivery goes to the dead-letter topic with this reason and is
/// never retried, because the next attempt would be rejected the same way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The host is a cloud metadata service name.
    #[error("host {0} is a cloud metadata service and is not in webhooks.allow_list")]
    MetadataHost(String),
    /// Every address of the host is non-public and none is allowed.
    #[error("host {host} resolves to {address}, a {class} address not in webhooks.allow_list")]
    Address {
        /// Host as written in the URL.
        host: String,
        /// First rejected address, with the port.
        address: SocketAddr,
        /// Class name of the address.
        class: &'static str,
    },
}

/// The allow-list and the checks against it.
#[derive(Debug, Clone, Default)]
pub struct AddressGuard {
    allowed: Vec<AllowedEndpoint>,
}

impl AddressGuard {
    /// Creates a guard that lets through the non-public endpoints `allowed` names.
    pub fn new(allowed: Vec<AllowedEndpoint>) -> Self {
        Self { allowed }
    }

    /// Rejects a metadata host name before it is looked up, unless the allow-list names it.
    pub fn check_host(&self, host: &str, port: u16) -> Result<(), Rejection> {
        let host = host.to_ascii_lowercase();
        let host = host.trim_end_matches('.');
        if METADATA_HOSTS.contains(&host) && !self.names_host(host, port) {
            return Err(Rejection::MetadataHost(host.to_owned()));
        }
        Ok(())
    }

    /// Keeps the resolved addresses a delivery may connect to. Fails when none is left,
    /// naming the first rejected address.
    pub fn filter(
        &self,
        host: &str,
        resolved: &[SocketAddr],
    ) -> Result<Vec<SocketAddr>, Rejection> {
        let mut allowed = Vec::with_capacity(resolved.len());
        let mut first_rejected = None;
        for address in resolved {
            match self.check_address(host, *address) {
                Ok(()) => allowed.push(*address),
                Err(class) => {
                    first_rejected.get_or_insert((*address, class));
                }
            }
        }
        match (allowed.is_empty(), first_rejected) {
            (true, Some((address, class))) => Err(Rejection::Address {
                host: host.to_owned(),
                address,
                class: class.as_str(),
            }),
            _ => Ok(allowed),
        }
    }

    fn check_address(&self, host: &str, address: SocketAddr) -> Result<(), AddressClass> {
        let Some(class) = classify(address.ip()) else {
            return Ok(());
        };
        let listed = self.allowed.iter().any(|entry| match entry {
            AllowedEndpoint::Network {
                address: network,
                prefix_len,
            } => contains(*network, *prefix_len, address.ip()),
            AllowedEndpoint::HostPort {
                host: allowed_host,
                port,
            } => {
                *port == address.port()
                    && (allowed_host.eq_ignore_ascii_case(host)
                        || allowed_host.parse::<IpAddr>().ok() == Some(address.ip()))
            }
        });
        if listed { Ok(()) } else { Err(class) }
    }

    fn names_host(&self, host: &str, port: u16) -> bool {
        self.allowed.iter().any(|entry| {
            matches!(entry, AllowedEndpoint::HostPort { host: allowed, port: allowed_port }
                if allowed == host && *allowed_port == port)
        })
    }
}

/// Returns whether `address` lies in the network `network/prefix_len`.
fn contains(network: IpAddr, prefix_len: u8, address: IpAddr) -> bool {
    match (network, address) {
        (IpAddr::V4(network), IpAddr::V4(address)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix_len))
                .unwrap_or(0);
            u32::from(network) & mask == u32::from(address) & mask
        }
        (IpAddr::V6(network), IpAddr::V6(address)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix_len))
                .unwrap_or(0);
            u128::from(network) & mask == u128::from(address) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(text: &str) -> Option<AddressClass> {
        classify(text.parse().unwrap())
    }

    fn socket(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn classifies_non_public_addresses() {
        let cases = [
            ("0.0.0.0", AddressClass::Unspecified),
            ("127.0.0.1", AddressClass::Loopback),
            ("127.255.0.9", AddressClass::Loopback),
            ("10.1.2.3", AddressClass::Private),
            ("172.16.0.1", AddressClass::Private),
            ("172.31.255.255", AddressClass::Private),
            ("192.168.1.1", AddressClass::Private),
            ("100.64.0.1", AddressClass::SharedCgnat),
            ("100.127.255.254", AddressClass::SharedCgnat),
            ("169.254.10.1", AddressClass::LinkLocal),
            ("169.254.169.254", AddressClass::CloudMetadata),
            ("224.0.0.1", AddressClass::NotUnicast),
            ("255.255.255.255", AddressClass::NotUnicast),
            ("::", AddressClass::Unspecified),
            ("::1", AddressClass::Loopback),
            ("fe80::1", AddressClass::LinkLocal),
            ("fc00::1", AddressClass::UniqueLocal),
            ("fd12:3456::1", AddressClass::UniqueLocal),
            ("fd00:ec2::254", AddressClass::CloudMetadata),
            ("::ffff:127.0.0.1", AddressClass::Loopback),
            ("::ffff:169.254.169.254", AddressClass::CloudMetadata),
            ("64:ff9b::10.0.0.1", AddressClass::Private),
            ("ff02::1", AddressClass::NotUnicast),
        ];
        for (address, expected) in cases {
            assert_eq!(class(address), Some(expected), "{address}");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for address in [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "192.169.0.1",
            "2001:4860:4860::8888",
            "::ffff:8.8.4.4",
        ] {
            assert_eq!(class(address), None, "{address}");
        }
    }

    #[test]
    fn allow_list_admits_named_endpoints_only() {
        let guard = AddressGuard::new(vec![
            AllowedEndpoint::parse("127.0.0.1:8080").unwrap(),
            AllowedEndpoint::parse("10.20.0.0/16").unwrap(),
            AllowedEndpoint::parse("hooks.internal:443").unwrap(),
        ]);
        assert!(
            guard
                .filter("127.0.0.1", &[socket("127.0.0.1:8080")])
                .is_ok()
        );
        assert!(guard.filter("10.20.3.4", &[socket("10.20.3.4:80")]).is_ok());
        assert!(
            guard
                .filter("hooks.internal", &[socket("192.168.0.5:443")])
                .is_ok()
        );

        let rejected = guard.filter("127.0.0.1", &[socket("127.0.0.1:8081")]);
        assert_eq!(
            rejected,
            Err(Rejection::Address {
                host: "127.0.0.1".into(),
                address: socket("127.0.0.1:8081"),
                class: "loopback",
            })
        );
        assert!(
            guard
                .filter("10.21.0.1", &[socket("10.21.0.1:80")])
                .is_err()
        );
        assert!(
            guard
                .filter("hooks.internal", &[socket("192.168.0.5:80")])
                .is_err()
        );
    }

    #[test]
    fn rebound_name_keeps_only_public_addresses() {
        let guard = AddressGuard::default();
        let kept = guard
            .filter(
                "hooks.example",
                &[socket("10.0.0.7:443"), socket("93.184.216.34:443")],
            )
            .unwrap();
        assert_eq!(kept, vec![socket("93.184.216.34:443")]);
        let error = guard
            .filter("hooks.example", &[socket("169.254.169.254:80")])
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "host hooks.example resolves to 169.254.169.254:80, a cloud metadata address not in webhooks.allow_list"
        );
    }

    #[test]
    fn metadata_host_names_are_rejected_before_lookup() {
        let guard = AddressGuard::default();
        assert!(matches!(
            guard.check_host("Metadata.Google.Internal.", 80),
            Err(Rejection::MetadataHost(_))
        ));
        assert!(guard.check_host("hooks.example", 443).is_ok());
        let allowed = AddressGuard::new(vec![
            AllowedEndpoint::parse("metadata.google.internal:80").unwrap(),
        ]);
        assert!(allowed.check_host("metadata.google.internal", 80).is_ok());
    }
}
