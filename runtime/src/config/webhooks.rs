use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Settings of the webhook dispatcher. Its admin address, consumer group prefix, catch-up
/// timeout and drain deadline come from `[processors]`, like every stream processor's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Time limit of one delivery attempt when the subscription sets none, in milliseconds,
    /// from resolving the host to reading the response. Default 10000.
    pub default_timeout_ms: u64,
    /// Deliveries in flight to one endpoint at once when the subscription sets no
    /// `max_concurrency`. Default 4.
    pub default_max_concurrency: u32,
    /// Attempts per delivery, counting the first one; after the last failed attempt the
    /// delivery goes to the webhook dead-letter topic. Default 6.
    pub max_attempts: u32,
    /// Wait before the second attempt, in milliseconds. The wait before each later retry
    /// tier is multiplied by `retry_backoff_multiplier`, up to `retry_max_backoff_ms`; attempts
    /// past the last tier wait as long as the last tier. Default 5000.
    pub retry_initial_backoff_ms: u64,
    /// Factor between the waits of consecutive retry tiers. Default 6, which gives 5 s, 30 s
    /// and 180 s with the default initial backoff.
    pub retry_backoff_multiplier: u32,
    /// Longest wait before an attempt, in milliseconds. Default 300000 (5 minutes).
    pub retry_max_backoff_ms: u64,
    /// Deliveries started and not yet settled (delivered, or their retry or dead-letter record
    /// acknowledged by Kafka), over all endpoints. Intake pauses at this count. Default 1000.
    pub max_in_flight_deliveries: usize,
    /// Deliveries that may wait for a free slot of one endpoint. Past this count a delivery
    /// goes straight to the first retry tier without using up an attempt, so a slow endpoint
    /// never fills the in-flight limit that healthy endpoints share. Default 100.
    pub max_queued_per_endpoint: usize,
    /// Bytes of an endpoint's response body kept in the dead-letter record. Default 1024.
    pub response_body_max_bytes: usize,
    /// Endpoints allowed even though their address is private, loopback, link-local,
    /// unique-local, shared (CGNAT) or a cloud metadata address. Each entry is a network in
    /// CIDR form (`10.20.0.0/16`, `fd12::/64`) or a `host:port` pair (`127.0.0.1:8080`,
    /// `[::1]:9000`, `hooks.internal:443`). Default empty: every such address is rejected.
    pub allow_list: Vec<String>,
    /// Paths of PEM files with CA certificates to trust for `https` endpoints, in addition to
    /// the Mozilla root certificates built into the dispatcher (the `webpki-roots` crate).
    /// Every certificate in each file is trusted. For receivers whose certificates come from a
    /// private CA. A file that is unreadable or contains no certificate stops the dispatcher at
    /// start. Default empty: only the built-in roots are trusted.
    pub extra_ca_certificate_files: Vec<String>,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            default_timeout_ms: 10_000,
            default_max_concurrency: 4,
            max_attempts: 6,
            retry_initial_backoff_ms: 5_000,
            retry_backoff_multiplier: 6,
            retry_max_backoff_ms: 300_000,
            max_in_flight_deliveries: 1_000,
            max_queued_per_endpoint: 100,
            response_body_max_bytes: 1_024,
            allow_list: Vec::new(),
            extra_ca_certificate_files: Vec::new(),
        }
    }
}

/// One entry of `webhooks.allow_list`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedEndpoint {
    /// Every address of a network.
    Network {
        /// Network address; bits past `prefix_len` are ignored.
        address: IpAddr,
        /// Leading bits that must match.
        prefix_len: u8,
    },
    /// One host, written as a name or an address, on one port.
    HostPort {
        /// Host name (lowercase) or address text, without IPv6 brackets.
        host: String,
        /// TCP port.
        port: u16,
    },
}

impl AllowedEndpoint {
    /// Parses `a.b.c.d/n`, `v6/n`, `host:port` or `[v6]:port`.
    pub fn parse(entry: &str) -> Result<Self, String> {
        let entry = entry.trim();
        if let Some((address, prefix)) = entry.split_once('/') {
            let address: IpAddr = address
                .parse()
                .map_err(|_| format!("{address:?} is not an IP address"))?;
            let max = if address.is_ipv4() { 32 } else { 128 };
            let prefix_len = prefix
                .parse::<u8>()
                .ok()
                .filter(|length| *length <= max)
                .ok_or_else(|| format!("prefix length {prefix:?} is not between 0 and {max}"))?;
            return Ok(Self::Network {
                address,
                prefix_len,
            });
        }
        let (host, port) = entry
            .rsplit_once(':')
            .ok_or_else(|| "expected a CIDR network or host:port".to_owned())?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err("the host is empty".to_owned());
        }
        let port = port
            .parse::<u16>()
            .map_err(|_| format!("port {port:?} is not a number from 0 to 65535"))?;
        Ok(Self::HostPort {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

impl WebhooksConfig {
    /// Returns the parsed allow-list; [`super::Config::validate`] has checked every entry.
    pub fn allowed_endpoints(&self) -> Vec<AllowedEndpoint> {
        self.allow_list
            .iter()
            .filter_map(|entry| AllowedEndpoint::parse(entry).ok())
            .collect()
    }

    pub(super) fn validate(&self, problems: &mut Vec<String>) {
        for (name, value) in [
            ("default_timeout_ms", self.default_timeout_ms),
            (
                "default_max_concurrency",
                u64::from(self.default_max_concurrency),
            ),
            ("max_attempts", u64::from(self.max_attempts)),
            ("retry_initial_backoff_ms", self.retry_initial_backoff_ms),
            (
                "retry_backoff_multiplier",
                u64::from(self.retry_backoff_multiplier),
            ),
            (
                "max_in_flight_deliveries",
                self.max_in_flight_deliveries as u64,
            ),
        ] {
            if value == 0 {
                problems.push(format!("webhooks.{name} is 0: set at least 1"));
            }
        }
        if self.retry_max_backoff_ms < self.retry_initial_backoff_ms {
            problems.push(format!(
                "webhooks.retry_max_backoff_ms {} is below retry_initial_backoff_ms {}",
                self.retry_max_backoff_ms, self.retry_initial_backoff_ms
            ));
        }
        for (position, entry) in self.allow_list.iter().enumerate() {
            if let Err(problem) = AllowedEndpoint::parse(entry) {
                problems.push(format!(
                    "webhooks.allow_list[{position}] {entry:?} is invalid: {problem}"
                ));
            }
        }
        for (position, path) in self.extra_ca_certificate_files.iter().enumerate() {
            if path.trim().is_empty() {
                problems.push(format!(
                    "webhooks.extra_ca_certificate_files[{position}] is empty: set a PEM file path"
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_entries_parse() {
        assert_eq!(
            AllowedEndpoint::parse("10.20.0.0/16"),
            Ok(AllowedEndpoint::Network {
                address: "10.20.0.0".parse().unwrap(),
                prefix_len: 16
            })
        );
        assert_eq!(
            AllowedEndpoint::parse("[::1]:9000"),
            Ok(AllowedEndpoint::HostPort {
                host: "::1".into(),
                port: 9000
            })
        );
        assert_eq!(
            AllowedEndpoint::parse("Hooks.Internal:443"),
            Ok(AllowedEndpoint::HostPort {
                host: "hooks.internal".into(),
                port: 443
            })
        );
    }

    #[test]
    fn invalid_settings_are_reported() {
        let config = WebhooksConfig {
            max_attempts: 0,
            retry_max_backoff_ms: 1,
            allow_list: vec!["10.0.0.0/40".into(), "localhost".into(), ":80".into()],
            extra_ca_certificate_files: vec![" ".into()],
            ..WebhooksConfig::default()
        };
        let mut problems = Vec::new();
        config.validate(&mut problems);
        let text = problems.join("\n");
        assert!(text.contains("max_attempts is 0"), "{text}");
        assert!(text.contains("retry_max_backoff_ms"), "{text}");
        assert!(text.contains("allow_list[0]"), "{text}");
        assert!(text.contains("allow_list[1]"), "{text}");
        assert!(text.contains("allow_list[2]"), "{text}");
        assert!(text.contains("extra_ca_certificate_files[0]"), "{text}");
    }
}
