use serde::{Deserialize, Serialize};

/// Settings of the stream processors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProcessorsConfig {
    /// Address of the admin server (`/healthz`, `/metrics`). Port 0 picks a free port.
    /// Default `127.0.0.1:0`.
    pub admin_listen_addr: String,
}

impl Default for ProcessorsConfig {
    fn default() -> Self {
        Self {
            admin_listen_addr: "127.0.0.1:0".to_owned(),
        }
    }
}

impl ProcessorsConfig {
    pub(super) fn validate(&self, problems: &mut Vec<String>) {
        if self
            .admin_listen_addr
            .parse::<std::net::SocketAddr>()
            .is_err()
        {
            problems.push(format!(
                "processors.admin_listen_addr {:?} is not an ip:port address",
                self.admin_listen_addr
            ));
        }
    }
}
