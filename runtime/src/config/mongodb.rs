use serde::{Deserialize, Serialize};

/// MongoDB connection settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MongoConfig {
    /// Connection string: a single server, a replica set or `mongodb+srv://`. TLS and
    /// credentials go in the string as usual. Default `mongodb://127.0.0.1:27017/`.
    pub uri: String,
    /// Database that holds the FieldForce collections. Default `fieldforce`.
    pub database: String,
    /// Write concern of the sink's writes: `majority`, or a node count such as `1`. Default
    /// `majority`, so that an acknowledged write survives a primary failover.
    pub write_concern: String,
    /// How long a write may wait for its write concern, in milliseconds. Default 10000.
    pub write_concern_timeout_ms: u64,
}

impl Default for MongoConfig {
    fn default() -> Self {
        Self {
            uri: "mongodb://127.0.0.1:27017/".to_owned(),
            database: "fieldforce".to_owned(),
            write_concern: "majority".to_owned(),
            write_concern_timeout_ms: 10_000,
        }
    }
}

impl MongoConfig {
    pub(super) fn validate(&self, problems: &mut Vec<String>) {
        if !(self.uri.starts_with("mongodb://") || self.uri.starts_with("mongodb+srv://")) {
            problems.push(format!(
                "mongodb.uri {:?} must start with mongodb:// or mongodb+srv://",
                self.uri
            ));
        }
        if self.database.is_empty() {
            problems.push("mongodb.database is empty".into());
        }
        if self.write_concern != "majority" && self.write_concern.parse::<u32>().is_err() {
            problems.push(format!(
                "mongodb.write_concern {:?} must be \"majority\" or a node count",
                self.write_concern
            ));
        }
    }
}
