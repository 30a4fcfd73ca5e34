//! The Kubernetes manifests under `k8s/` parse, and agree with the topic catalog and with the
//! services' configuration keys. Needs no running server.

#![allow(clippy::unwrap_used, reason = "a test reports a failure by panicking")]
#![allow(
    clippy::result_large_err,
    reason = "figment::Jail fixes the closure's error type to figment::Error"
)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use fieldforce_kafka::catalog::Catalog;
use fieldforce_runtime::config::Config;
use serde_yaml_ng::Value;

/// Each consumer Deployment, the consumer group it runs and the catalog topic it reads.
const CONSUMERS: [(&str, &str, &str); 5] = [
    (
        "fieldforce-validate",
        "fieldforce-validation",
        "submissions.raw",
    ),
    ("fieldforce-geo", "fieldforce-geo", "submissions.validated"),
    (
        "fieldforce-quality",
        "fieldforce-quality",
        "submissions.located",
    ),
    (
        "fieldforce-sink",
        "fieldforce-sink",
        "submissions.processed",
    ),
    (
        "fieldforce-analytics",
        "fieldforce-analytics",
        "submissions.processed",
    ),
];

fn manifests() -> Vec<(String, Value)> {
    let folder = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../k8s");
    let mut documents = Vec::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&folder)
        .expect("k8s/ exists")
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.extension()
                .is_some_and(|extension| extension == "yaml")
        })
        .collect();
    paths.sort();
    for path in paths {
        let text = std::fs::read_to_string(&path).unwrap();
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = <Value as serde::Deserialize>::deserialize(document)
                .unwrap_or_else(|error| panic!("{} does not parse: {error}", path.display()));
            if !value.is_null() {
                documents.push((path.display().to_string(), value));
            }
        }
    }
    documents
}

fn of_kind<'a>(documents: &'a [(String, Value)], kind: &str) -> Vec<&'a Value> {
    documents
        .iter()
        .filter(|(_, document)| document["kind"].as_str() == Some(kind))
        .map(|(_, document)| document)
        .collect()
}

fn named<'a>(documents: &'a [(String, Value)], kind: &str, name: &str) -> &'a Value {
    of_kind(documents, kind)
        .into_iter()
        .find(|document| document["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} named {name} in k8s/"))
}

fn container_env(deployment: &Value) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for variable in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_sequence()
        .expect("every Deployment sets env")
    {
        let name = variable["name"].as_str().unwrap().to_owned();
        // Secrets are not in the manifests; a valid stand-in checks the key all the same.
        let value = match variable["value"].as_str() {
            Some(value) => value.to_owned(),
            None if name.ends_with("URI") => "mongodb://secret.invalid/".to_owned(),
            None => "secret".to_owned(),
        };
        env.insert(name, value);
    }
    env
}

/// Loads the configuration the way the service would from its `FIELDFORCE_*` variables.
fn config_from_env(env: &BTreeMap<String, String>) -> Config {
    let mut loaded = None;
    figment::Jail::expect_with(|jail| {
        for (name, value) in env {
            if name != "FIELDFORCE_CONFIG" {
                jail.set_env(name, value);
            }
        }
        let config = Config::load(None)
            .unwrap_or_else(|error| panic!("the manifests set an unknown or invalid key: {error}"));
        loaded = Some(config);
        Ok(())
    });
    loaded.expect("the jail ran")
}

#[test]
fn manifests_parse() {
    let documents = manifests();
    assert!(!of_kind(&documents, "Deployment").is_empty());
    for (path, document) in &documents {
        assert!(
            document["apiVersion"].is_string(),
            "{path}: apiVersion missing"
        );
        assert!(
            document["metadata"]["name"].is_string(),
            "{path}: name missing"
        );
    }
}

#[test]
fn scaled_objects_agree_with_catalog() {
    let documents = manifests();
    let catalog = Catalog::embedded();
    for (deployment, group, topic) in CONSUMERS {
        let scaled = named(&documents, "ScaledObject", deployment);
        let trigger = &scaled["spec"]["triggers"][0]["metadata"];
        assert_eq!(
            trigger["consumerGroup"].as_str(),
            Some(group),
            "{deployment}"
        );
        assert_eq!(
            trigger["topic"].as_str(),
            Some(format!("fieldforce.{topic}").as_str()),
            "{deployment}"
        );
        assert!(
            trigger["activationLagThreshold"].is_string(),
            "{deployment}"
        );

        let partitions = catalog.topic(topic).unwrap().partitions as u64;
        let ceiling = scaled["spec"]["maxReplicaCount"].as_u64().unwrap();
        assert!(
            ceiling <= partitions,
            "{deployment}: {ceiling} replicas but {topic} has {partitions} partitions"
        );
        let stabilisation = &scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
            ["scaleDown"]["stabilizationWindowSeconds"];
        assert!(stabilisation.as_u64().unwrap_or(0) >= 300, "{deployment}");
    }
}

#[test]
fn deployments_use_known_config_keys() {
    let documents = manifests();
    for deployment in of_kind(&documents, "Deployment") {
        let name = deployment["metadata"]["name"].as_str().unwrap();
        let env = container_env(deployment);
        config_from_env(&env);
        assert!(env.contains_key("FIELDFORCE_CONFIG"), "{name}");
    }
}

#[test]
fn grace_period_outlasts_drain_deadline() {
    let documents = manifests();
    for deployment in of_kind(&documents, "Deployment") {
        let name = deployment["metadata"]["name"].as_str().unwrap();
        let config = config_from_env(&container_env(deployment));
        let drain_ms = match name {
            "fieldforce-gateway" => config.gateway.shutdown_timeout_ms,
            "fieldforce-sink" => config.sink.shutdown_drain_timeout_ms,
            "fieldforce-analytics" => config.analytics.shutdown_drain_timeout_ms,
            _ => config.processors.shutdown_drain_timeout_ms,
        };
        let grace_s = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap();
        assert!(
            grace_s * 1000 > drain_ms,
            "{name}: grace period {grace_s} s is not longer than the drain deadline {drain_ms} ms"
        );
    }
}

#[test]
fn deployments_have_probes_and_resources() {
    let documents = manifests();
    for deployment in of_kind(&documents, "Deployment") {
        let name = deployment["metadata"]["name"].as_str().unwrap();
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        assert!(container["readinessProbe"].is_mapping(), "{name}");
        assert!(container["livenessProbe"].is_mapping(), "{name}");
        assert!(container["resources"]["requests"].is_mapping(), "{name}");
        assert!(
            container["resources"]["limits"]["memory"].is_string(),
            "{name}"
        );
        named(&documents, "PodDisruptionBudget", name);
    }
    named(&documents, "HorizontalPodAutoscaler", "fieldforce-gateway");
}
