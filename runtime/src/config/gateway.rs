use serde::{Deserialize, Serialize};

/// Settings of the ingest gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Address the HTTP server listens on. Default `127.0.0.1:8080`.
    pub listen_addr: String,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen_addr: "127.0.0.1:8080".to_owned(),
        }
    }
}

impl GatewayConfig {
    pub(super) fn validate(&self, problems: &mut Vec<String>) {
        if self.listen_addr.parse::<std::net::SocketAddr>().is_err() {
            problems.push(format!(
                "gateway.listen_addr {:?} is not an ip:port address",
                self.listen_addr
            ));
        }
    }
}
