//! The Kubernetes manifests under `k8s/` parse, and agree with the topic catalog and with the
//! services' configuration keys; the alert rules and the dashboard under `k8s/monitoring/`
//! parse and name only metrics that the services declare. Needs no running server.

#![allow(clippy::unwrap_used, reason = "a test reports a failure by panicking")]
#![allow(
    clippy::result_large_err,
    reason = "figment::Jail fixes the closure's error type to figment::Error"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use fieldforce_kafka::catalog::Catalog;
use fieldforce_runtime::config::Config;
use prometheus_client::registry::Registry;
use serde_yaml_ng::Value;

/// Each consumer Deployment, the consumer group it runs and the catalog topic it reads.
const CONSUMERS: [(&str, &str, &str); 6] = [
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
        "fieldforce-webhooks",
        "fieldforce-webhooks",
        "submissions.stored",
    ),
    (
        "fieldforce-analytics",
        "fieldforce-analytics",
        "submissions.processed",
    ),
];

fn k8s_folder() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../k8s")
}

fn manifests() -> Vec<(String, Value)> {
    let folder = k8s_folder();
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
            // The operations service drains nothing: it only reads.
            "fieldforce-ops" => 0,
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

#[test]
fn ops_checks_every_service() {
    let documents = manifests();
    let ops = named(&documents, "Deployment", "fieldforce-ops");
    let config = config_from_env(&container_env(ops));
    assert_eq!(
        config.ops.listen_addr, "0.0.0.0:9400",
        "the page listens on its container port"
    );

    for deployment in of_kind(&documents, "Deployment") {
        let name = deployment["metadata"]["name"].as_str().unwrap();
        if name == "fieldforce-ops" {
            continue;
        }
        let short = name.trim_start_matches("fieldforce-");
        let url = config
            .ops
            .services
            .get(short)
            .unwrap_or_else(|| panic!("ops.services has no entry for {name}"));
        let host_port = url.trim_start_matches("http://");
        let (host, port) = host_port.split_once(':').unwrap();
        let service = named(&documents, "Service", host);
        assert_eq!(
            service["spec"]["selector"]["app.kubernetes.io/name"].as_str(),
            Some(name),
            "{url} reaches {name}"
        );
        let port: u64 = port.parse().unwrap();
        assert!(
            service["spec"]["ports"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|candidate| candidate["port"].as_u64() == Some(port)),
            "{host} serves port {port}"
        );
    }
}
fn read_yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("{} is unreadable: {error}", path.display()));
    serde_yaml_ng::from_str(&text)
        .unwrap_or_else(|error| panic!("{} does not parse: {error}", path.display()))
}

fn alert_rules() -> Vec<Value> {
    let document = read_yaml(&k8s_folder().join("monitoring/alerts.yaml"));
    assert_eq!(document["kind"].as_str(), Some("PrometheusRule"));
    document["spec"]["groups"]
        .as_sequence()
        .expect("the rule file has groups")
        .iter()
        .flat_map(|group| {
            group["rules"]
                .as_sequence()
                .expect("every group has rules")
                .clone()
        })
        .collect()
}

/// Reads the dashboard the way kustomize does: the JSON file that the configMapGenerator of
/// `k8s/monitoring/kustomization.yaml` puts into the labelled ConfigMap.
fn dashboard() -> serde_json::Value {
    let folder = k8s_folder().join("monitoring");
    let kustomization = read_yaml(&folder.join("kustomization.yaml"));
    let generator = kustomization["configMapGenerator"]
        .as_sequence()
        .expect("a configMapGenerator")
        .iter()
        .find(|generator| generator["name"].as_str() == Some("fieldforce-dashboard"))
        .expect("a generator for the dashboard ConfigMap");
    assert_eq!(
        generator["options"]["labels"]["grafana_dashboard"].as_str(),
        Some("1"),
        "Grafana's sidecar loads only ConfigMaps with this label"
    );
    let entry = generator["files"][0].as_str().unwrap();
    let (key, file) = entry.split_once('=').unwrap_or((entry, entry));
    assert!(key.ends_with(".json"), "{key}");
    let text = std::fs::read_to_string(folder.join(file)).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("{file} is not JSON: {error}"))
}

fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<String> {
    let mut queries = Vec::new();
    for panel in dashboard["panels"]
        .as_array()
        .expect("the dashboard has panels")
    {
        let title = panel["title"].as_str().unwrap_or_default();
        let targets = panel["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{title}: no targets"));
        assert!(!targets.is_empty(), "{title}: no targets");
        for target in targets {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{title}: no expr"));
            queries.push(expr.to_owned());
        }
    }
    queries
}

/// Returns the gateway's exposition with one series in every labelled family, because a
/// family without series is left out of the encoding.
fn gateway_exposition() -> String {
    let metrics = fieldforce_gateway::metrics::Metrics::new();
    metrics.request("json", &http::Method::POST, 201, Duration::from_millis(5));
    metrics.accepted("json");
    metrics.rejected("bad_request");
    metrics.render()
}

/// Returns every series name the services expose. Each service's metrics are registered into
/// a fresh registry and encoded, and counters and histograms get their sample suffixes.
fn declared_series() -> BTreeSet<String> {
    let mut exposition = gateway_exposition();

    let mut registry = Registry::default();
    let processor = fieldforce_processors::metrics::Metrics::register(
        &mut registry,
        "validation",
        "fieldforce-validation",
    );
    // The lag gauges have series only for assigned partitions.
    processor.lag.assign("submissions.raw", 0);
    prometheus_client::encoding::text::encode(&mut exposition, &registry).unwrap();

    let mut registry = Registry::default();
    let sink = fieldforce_sink_mongodb::metrics::Metrics::new(&mut registry, "fieldforce-sink");
    sink.dead_lettered
        .get_or_create(&fieldforce_sink_mongodb::metrics::ReasonLabel {
            reason: "undecodable",
        })
        .inc();
    prometheus_client::encoding::text::encode(&mut exposition, &registry).unwrap();

    let mut registry = Registry::default();
    let ops = fieldforce_ops::metrics::Metrics::new(&mut registry);
    let label = fieldforce_ops::metrics::GroupStatusLabel {
        group: "fieldforce-sink".to_owned(),
        status: "OK",
    };
    ops.group_status.get_or_create(&label).set(1);
    prometheus_client::encoding::text::encode(&mut exposition, &registry).unwrap();

    let mut series = BTreeSet::new();
    for line in exposition.lines() {
        let Some(declaration) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = declaration.split_once(' ').unwrap();
        match kind {
            "counter" => {
                series.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_count", "_sum"] {
                    series.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                series.insert(name.to_owned());
            }
        }
    }
    series
}

/// Returns the FieldForce metric names a PromQL expression reads.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(start) = rest.find("fieldforce_") {
        let tail = &rest[start..];
        let end = tail
            .find(|character: char| !(character.is_ascii_alphanumeric() || character == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

#[test]
fn alert_rules_parse() {
    let rules = alert_rules();
    let names: BTreeSet<&str> = rules
        .iter()
        .filter_map(|rule| rule["alert"].as_str())
        .collect();
    for expected in [
        "FieldForceConsumerLagGrowing",
        "FieldForceConsumerGroupStalled",
        "FieldForceDeadLetterRateHigh",
        "FieldForceGatewayLatencyHigh",
        "FieldForceGateway5xxRateHigh",
    ] {
        assert!(
            names.contains(expected),
            "{expected} missing from {names:?}"
        );
    }
    for rule in &rules {
        let name = rule["alert"].as_str().expect("every rule is an alert");
        assert!(rule["expr"].is_string(), "{name}: expr missing");
        assert!(
            rule["labels"]["severity"].is_string(),
            "{name}: severity missing"
        );
        assert!(
            rule["annotations"]["summary"].is_string(),
            "{name}: summary missing"
        );
    }
}

#[test]
fn latency_alert_uses_bucket_bound() {
    let rules = alert_rules();
    let latency = rules
        .iter()
        .find(|rule| rule["alert"].as_str() == Some("FieldForceGatewayLatencyHigh"))
        .unwrap();
    let expr = latency["expr"].as_str().unwrap();
    assert!(expr.contains("histogram_quantile(0.95"), "{expr}");
    assert!(expr.trim_end().ends_with("> 0.2"), "{expr}");
    let exposition = gateway_exposition();
    assert!(
        exposition.contains(
            "fieldforce_gateway_request_duration_seconds_bucket{le=\"0.2\",route=\"json\",method=\"POST\",status_class=\"2xx\"}"
        ),
        "0.2 s is a bucket bound of the request duration histogram: {exposition}"
    );
}

#[test]
fn dashboard_parses() {
    let dashboard = dashboard();
    assert!(dashboard["title"].is_string());
    assert!(dashboard["uid"].is_string());
    let titles: Vec<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|panel| panel["title"].as_str())
        .collect();
    for expected in [
        "Consumer lag (records)",
        "Consumer lag (seconds)",
        "Throughput",
        "Dead-letters",
        "Gateway latency",
        "Gateway 5xx rate",
        "Sink write duration",
    ] {
        assert!(
            titles.contains(&expected),
            "{expected} missing from {titles:?}"
        );
    }
}

#[test]
fn monitoring_reads_declared_metrics() {
    let declared = declared_series();
    let mut expressions: Vec<(String, String)> = alert_rules()
        .iter()
        .map(|rule| {
            (
                rule["alert"].as_str().unwrap().to_owned(),
                rule["expr"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    expressions.extend(
        dashboard_queries(&dashboard())
            .into_iter()
            .map(|expr| ("dashboard".to_owned(), expr)),
    );
    for (source, expr) in &expressions {
        let names = metric_names(expr);
        assert!(
            !names.is_empty(),
            "{source}: reads no FieldForce metric: {expr}"
        );
        for name in names {
            assert!(
                declared.contains(&name),
                "{source}: {name} is not declared by any service; declared: {declared:#?}"
            );
        }
    }
}
