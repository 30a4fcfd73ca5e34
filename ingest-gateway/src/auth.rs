//! Authentication: tokens, kept only as SHA-256 digests, map to an organisation, its allowed
//! projects and a user. JSON clients send `Authorization: Bearer`; OpenRosa clients send HTTP
//! Basic (the password is the token, the user name is the enumerator) or carry the token in
//! the URL path. The organisation always comes from the token, never from the body.

use std::collections::HashMap;

use base64::Engine;
use fieldforce_runtime::config::GatewayConfig;
use http::HeaderMap;
use sha2::{Digest, Sha256};

/// The sender of a request, from its credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Organisation of every submission sent with these credentials.
    pub org_id: String,
    /// Projects the token may submit to; empty means all of the organisation's.
    pub projects: Vec<String>,
    /// User name: the Basic user name, else the token's configured user.
    pub user: Option<String>,
}

impl Principal {
    /// Whether the credentials grant the project.
    pub fn allows(&self, project_id: &str) -> bool {
        self.projects.is_empty() || self.projects.iter().any(|p| p == project_id)
    }
}

/// Rejection of the credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credentials were sent (401, the client should ask the user for them).
    #[error("credentials are missing")]
    Missing,
    /// The token is unknown or the header is malformed (401).
    #[error("the token is not valid")]
    Invalid,
}

/// The token table.
#[derive(Debug, Clone, Default)]
pub struct Authenticator {
    tokens: HashMap<String, Principal>,
}

impl Authenticator {
    /// Builds the table from the configuration. The development token is added only when
    /// `loopback` is true, that is when the gateway cannot be reached from another host.
    pub fn new(config: &GatewayConfig, loopback: bool) -> Self {
        let mut tokens = HashMap::new();
        for token in &config.tokens {
            tokens.insert(
                token.sha256.to_ascii_lowercase(),
                Principal {
                    org_id: token.org_id.clone(),
                    projects: token.projects.clone(),
                    user: (!token.user.is_empty()).then(|| token.user.clone()),
                },
            );
        }
        if !config.dev_token.is_empty() {
            if loopback {
                tokens.insert(
                    digest(&config.dev_token),
                    Principal {
                        org_id: config.dev_org_id.clone(),
                        projects: Vec::new(),
                        user: Some("dev".to_owned()),
                    },
                );
            } else {
                tracing::warn!(
                    "gateway.dev_token ignored because the gateway listens on a non-loopback address"
                );
            }
        }
        Self { tokens }
    }

    /// Resolves a token to its principal.
    pub fn resolve(&self, token: &str) -> Option<Principal> {
        self.tokens.get(&digest(token)).cloned()
    }

    /// Authenticates a request from its `Authorization` header or a token from its path.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        path_token: Option<&str>,
    ) -> Result<Principal, AuthError> {
        if let Some(token) = path_token {
            return self.resolve(token).ok_or(AuthError::Invalid);
        }
        let Some(header) = headers.get(http::header::AUTHORIZATION) else {
            return Err(AuthError::Missing);
        };
        let header = header.to_str().map_err(|_| AuthError::Invalid)?.trim();
        let (scheme, credentials) = header.split_once(' ').ok_or(AuthError::Invalid)?;
        let credentials = credentials.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            return self.resolve(credentials).ok_or(AuthError::Invalid);
        }
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(credentials)
                .map_err(|_| AuthError::Invalid)?;
            let decoded = String::from_utf8(decoded).map_err(|_| AuthError::Invalid)?;
            let (user, token) = decoded.split_once(':').ok_or(AuthError::Invalid)?;
            let mut principal = self.resolve(token).ok_or(AuthError::Invalid)?;
            if !user.is_empty() {
                principal.user = Some(user.to_owned());
            }
            return Ok(principal);
        }
        Err(AuthError::Invalid)
    }
}

/// Returns the hex SHA-256 of a token, the form tokens are configured in.
pub fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use fieldforce_runtime::config::GatewayToken;
    use http::HeaderValue;

    use super::*;

    fn config() -> GatewayConfig {
        GatewayConfig {
            tokens: vec![GatewayToken {
                sha256: digest("s3cret"),
                org_id: "acme".into(),
                projects: vec!["census".into()],
                user: "tablet-7".into(),
            }],
            ..GatewayConfig::default()
        }
    }

    #[test]
    fn basic_user_becomes_submitter() {
        let auth = Authenticator::new(&config(), true);
        let mut headers = HeaderMap::new();
        let encoded = base64::engine::general_purpose::STANDARD.encode("amina:s3cret");
        headers.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {encoded}")).unwrap(),
        );
        let principal = auth.authenticate(&headers, None).unwrap();
        assert_eq!(principal.org_id, "acme");
        assert_eq!(principal.user.as_deref(), Some("amina"));
        assert!(principal.allows("census"));
        assert!(!principal.allows("other"));
    }

    #[test]
    fn dev_token_needs_loopback() {
        let config = config();
        assert!(
            Authenticator::new(&config, true)
                .resolve(&config.dev_token)
                .is_some()
        );
        assert!(
            Authenticator::new(&config, false)
                .resolve(&config.dev_token)
                .is_none()
        );
    }

    #[test]
    fn missing_and_invalid_differ() {
        let auth = Authenticator::new(&config(), true);
        assert_eq!(
            auth.authenticate(&HeaderMap::new(), None),
            Err(AuthError::Missing)
        );
        assert_eq!(
            auth.authenticate(&HeaderMap::new(), Some("nope")),
            Err(AuthError::Invalid)
        );
    }
}
