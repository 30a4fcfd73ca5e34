//! What operators watch, against the real local stack: the lag command's sampling, the sink's
//! lag gauges and the operations page (its JSON and the DOM that headless Chromium renders).
//! They are checked while a backlog builds behind a stopped sink, while the restarted sink
//! drains it, and once it is gone. The page is also screenshotted and checked as a PNG.
//!
//! Needs the local stack (`make up`) and Debian's `chromium` (`make up` installs it when run
//! as root); fails with a message naming what is missing.

#![allow(clippy::unwrap_used, reason = "a test reports a failure by panicking")]

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Pipeline;
use fieldforce_kafka::catalog::{self, Catalog};
use fieldforce_kafka::client::producer_config;
use fieldforce_kafka::lag::{self, GroupLag, GroupStatus, Thresholds};
use fieldforce_replay::client::GatewayClient;
use fieldforce_replay::generate::{self, Generated, Generator, ProjectPlan};
use fieldforce_runtime::config::Config;
use fieldforce_runtime::shutdown::{self, ShutdownTrigger};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const PROJECT: &str = "operations";
/// Lag above which a moving group counts as lagging in these tests.
const LAGGING_RECORDS: i64 = 20;
/// Submissions left behind the stopped sink.
const BACKLOG: usize = 1_000;
const WINDOW: (u32, u32) = (1400, 1500);

/// Polls `probe` until it returns a value, failing with the last observation at the deadline.
async fn poll<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match probe().await {
            Ok(value) => return value,
            Err(last) => last,
        };
        assert!(
            Instant::now() < deadline,
            "{what} not seen within {timeout:?}; last: {last}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn http_get(url: &str) -> Result<(u16, String), String> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let response = client
        .get(url.parse().map_err(|error| format!("{error}"))?)
        .await
        .map_err(|error| format!("GET {url} failed: {error}"))?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn free_address() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Returns the path of headless Chromium, failing when it is not installed.
fn chromium() -> PathBuf {
    let candidates = ["/usr/bin/chromium", "/usr/bin/chromium-browser"];
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
        .unwrap_or_else(|| {
            panic!(
                "chromium not found at {candidates:?}: install the Debian package chromium \
                 (apt-get install chromium; `make up` does it when run as root)"
            )
        })
}

fn run_chromium(extra: &[String], url: &str) -> std::process::Output {
    let profile = tempfile::tempdir().unwrap();
    let output = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--window-size={},{}", WINDOW.0, WINDOW.1))
        .args(extra)
        .arg(url)
        .output()
        .expect("chromium runs");
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Returns the DOM of the page after its script ran.
async fn rendered_dom(url: String) -> String {
    tokio::task::spawn_blocking(move || {
        let output = run_chromium(&["--dump-dom".to_owned()], &url);
        String::from_utf8(output.stdout).unwrap()
    })
    .await
    .unwrap()
}

/// Screenshots the page into `path` and checks that the file is a PNG of the window's size
/// with more in it than a blank page.
async fn screenshot(url: String, path: PathBuf) {
    let target = path.clone();
    tokio::task::spawn_blocking(move || {
        run_chromium(&[format!("--screenshot={}", target.display())], &url);
    })
    .await
    .unwrap();

    let png = std::fs::read(&path).unwrap_or_else(|error| {
        panic!(
            "chromium wrote no screenshot at {}: {error}",
            path.display()
        )
    });
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    assert_eq!(&png[12..16], b"IHDR");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!((width, height), WINDOW, "screenshot size");
    // A blank page of this size compresses to a few kilobytes; text, tables and charts do not.
    assert!(
        png.len() > 40_000,
        "screenshot is {} bytes, too small to show the page",
        png.len()
    );
}

fn screenshot_path(name: &str) -> PathBuf {
    let folder = common::repo_root().join("target/screenshots");
    std::fs::create_dir_all(&folder).unwrap();
    folder.join(name)
}

/// Attribute value of the first element that has `anchor` among its attributes.
fn attribute_after(dom: &str, anchor: &str, name: &str) -> Option<String> {
    let start = dom.find(anchor)?;
    let tag_end = start + dom[start..].find('>')?;
    let tag_start = dom[..=start].rfind('<')?;
    let tag = &dom[tag_start..tag_end];
    let key = format!("{name}=\"");
    let value_start = tag.find(&key)? + key.len();
    let value_end = value_start + tag[value_start..].find('"')?;
    Some(tag[value_start..value_end].to_owned())
}

/// Lag per partition of `group` in the rendered DOM's partition table.
fn dom_partition_lags(dom: &str, group: &str) -> Vec<(i32, i64)> {
    let mut lags = Vec::new();
    let anchor = format!("<tr data-group=\"{group}\"");
    let mut rest = dom;
    while let Some(found) = rest.find(&anchor) {
        let row = &rest[found..];
        let partition = attribute_after(row, &anchor, "data-partition").unwrap();
        let lag = attribute_after(row, &anchor, "data-lag").unwrap();
        lags.push((partition.parse().unwrap(), lag.parse().unwrap()));
        rest = &row[anchor.len()..];
    }
    lags
}

/// Status of `group` in the rendered DOM's group cards.
fn dom_status(dom: &str, group: &str) -> Option<String> {
    attribute_after(
        dom,
        &format!("class=\"panel group\" data-group=\"{group}\""),
        "data-status",
    )
}

struct Service {
    trigger: ShutdownTrigger,
    task: JoinHandle<()>,
}

impl Service {
    async fn stop(self) {
        self.trigger.trigger();
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("the service stops within 60 s")
            .expect("the service did not panic");
    }
}

fn start_sink(config: &Config) -> Service {
    let (trigger, shutdown) = shutdown::channel();
    let sink = fieldforce_sink_mongodb::run(config.clone(), shutdown);
    let task = tokio::spawn(async move { sink.await.expect("sink runs") });
    Service { trigger, task }
}

async fn start_ops(config: &Config) -> (String, Service) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (trigger, shutdown) = shutdown::channel();
    let ops = fieldforce_ops::run(config.clone(), listener, shutdown);
    let task = tokio::spawn(async move { ops.await.expect("ops service runs") });
    (base, Service { trigger, task })
}

/// Posts `count` generated submissions in batch requests of 20.
async fn send_submissions(client: &GatewayClient, count: usize) {
    let form = client
        .register_form(PROJECT, Bytes::from(generate::xform()))
        .await;
    assert!(form.accepted(), "form: {} {}", form.status, form.body);
    let plan = ProjectPlan {
        token_index: 0,
        project_id: PROJECT.to_owned(),
        inside: [36.82, -1.29],
        outside: [39.27, -6.8],
    };
    let mut generator = Generator::new(7, vec![plan], 10, 0.0);
    let route = format!("/v1/projects/{PROJECT}/submissions/batch");
    for _ in 0..count / 20 {
        let items: Vec<Generated> = (0..20).map(|_| generator.next_for_plan(0)).collect();
        let outcome = client
            .post_json(&route, Bytes::from(generate::batch_json(&items)))
            .await;
        assert!(
            outcome.accepted(),
            "batch: {} {}",
            outcome.status,
            outcome.body
        );
    }
}

async fn sample_group(config: &Config, group: &str, topic: &str) -> GroupLag {
    let kafka = config.kafka.clone();
    let (group, topic) = (group.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || lag::sample(&kafka, &group, &[topic]))
        .await
        .unwrap()
        .expect("lag sample")
}

/// Samples a group as the lag command does: two samples some seconds apart, and the status
/// they give.
async fn lag_command(config: &Config, group: &str, topic: &str) -> (GroupLag, GroupStatus) {
    let thresholds = Thresholds {
        records: LAGGING_RECORDS,
        seconds: 30.0,
    };
    let earlier = sample_group(config, group, topic).await;
    // Longer than the consumers' auto-commit interval (1 s), so moving offsets show.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let later = sample_group(config, group, topic).await;
    let status = lag::classify(&earlier, &later, thresholds);
    (later, status)
}

async fn overview(base: &str) -> Value {
    let (status, body) = http_get(&format!("{base}/api/overview")).await.unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn group_of<'a>(overview: &'a Value, group: &str) -> Option<&'a Value> {
    overview["groups"]
        .as_array()?
        .iter()
        .find(|candidate| candidate["group"] == group)
}

/// Lag per partition in the sink's `/metrics`, for its group.
fn metric_lags(metrics: &str, group: &str) -> Vec<(i32, i64)> {
    let prefix = format!("{}{{group=\"{group}\",", lag::metrics::LAG_RECORDS);
    metrics
        .lines()
        .filter(|line| line.starts_with(&prefix))
        .filter_map(|line| {
            let partition = line.split("partition=\"").nth(1)?.split('"').next()?;
            let value = line.rsplit(' ').next()?;
            Some((partition.parse().ok()?, value.parse().ok()?))
        })
        .collect()
}

fn configure(config: &mut Config, sink_admin: SocketAddr) {
    config.sink.admin_listen_addr = sink_admin.to_string();
    config.sink.lag_sample_interval_ms = 500;
    // One document per bulk write, so that the drain is slow enough to watch.
    config.sink.batch_max_documents = 1;
    config.processors.lag_sample_interval_ms = 500;
    config.ops.sample_interval_ms = 500;
    config.ops.status_window_ms = 2_500;
    config.ops.history_s = 120;
    config.ops.lagging_records = LAGGING_RECORDS;
    config
        .ops
        .services
        .insert("sink".to_owned(), format!("http://{sink_admin}"));
}

fn partitions_of(topic: &str) -> usize {
    Catalog::embedded().topic(topic).unwrap().partitions as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_without_partitions_reads_as_unknown_lag() {
    let config = Config::load(None).expect("configuration loads");
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let topic = format!("test-ops-never-created-{suffix}");
    let group = format!("test-ops-never-created-{suffix}");

    let (sample, status) = lag_command(&config, &group, &topic).await;

    assert!(sample.partitions.is_empty(), "{sample:?}");
    assert_eq!(sample.missing_topics, vec![topic]);
    assert_eq!(status, GroupStatus::Unknown, "{sample:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sink_backlog_shows_lagging_then_drains() {
    let sink_admin = free_address();
    let pipeline = Pipeline::start_with(|config| configure(config, sink_admin), false).await;
    let config = pipeline.config.clone();
    let group = fieldforce_sink_mongodb::group_id(&config);
    let topic = config.kafka.topic(catalog::SUBMISSIONS_PROCESSED);
    let partitions = partitions_of(catalog::SUBMISSIONS_PROCESSED);
    let (ops, ops_service) = start_ops(&config).await;

    // The backlog: every submission processed, none stored.
    send_submissions(&pipeline.client, BACKLOG).await;
    poll(
        "the whole backlog on the processed topic",
        Duration::from_secs(180),
        || async {
            let sample = sample_group(&config, &group, &topic).await;
            if sample.lag_records() == BACKLOG as i64 {
                Ok(())
            } else {
                Err(format!("{} records of lag", sample.lag_records()))
            }
        },
    )
    .await;

    let (stopped, status) = lag_command(&config, &group, &topic).await;
    assert_eq!(status, GroupStatus::Stopped, "{stopped:?}");
    assert_eq!(stopped.partitions.len(), partitions);
    for partition in &stopped.partitions {
        assert!(partition.lag_records > 0, "{partition:?}");
    }
    let page = poll(
        "the stopped sink on the page",
        Duration::from_secs(30),
        || async {
            let overview = overview(&ops).await;
            match group_of(&overview, &group) {
                Some(found) if found["status"] == "STOPPED" && found["lag_records"] == BACKLOG => {
                    Ok(found.clone())
                }
                found => Err(format!("{found:?}")),
            }
        },
    )
    .await;
    assert_eq!(page["partitions"].as_array().unwrap().len(), partitions);
    let (status, ops_metrics) = http_get(&format!("{ops}/metrics")).await.unwrap();
    assert_eq!(status, 200);
    // The broker's view keeps the stopped group visible although no sink exports its lag.
    assert!(
        ops_metrics.contains(&format!(
            "fieldforce_ops_group_status{{group=\"{group}\",status=\"STOPPED\"}} 1"
        )),
        "{ops_metrics}"
    );
    assert!(
        ops_metrics.contains(&format!(
            "fieldforce_ops_group_lag_records{{group=\"{group}\"}} {BACKLOG}"
        )),
        "{ops_metrics}"
    );
    let dom = rendered_dom(format!("{ops}/")).await;
    assert_eq!(dom_status(&dom, &group).as_deref(), Some("STOPPED"));
    let dom_lags = dom_partition_lags(&dom, &group);
    assert_eq!(dom_lags.len(), partitions, "partition rows of {group}");
    assert_eq!(
        dom_lags.iter().map(|(_, lag)| lag).sum::<i64>(),
        BACKLOG as i64
    );

    // The restarted sink drains the backlog one document per bulk write.
    // NOTE: LAGGING must be seen before the drain ends; one-document writes make the drain
    // take seconds on the local stack, but a much faster store could finish it first.
    let sink = start_sink(&config);
    let sink_metrics = format!("http://{sink_admin}/metrics");

    let metric_lags_seen = poll(
        "lag per partition in the sink's metrics",
        Duration::from_secs(60),
        || async {
            let (_, metrics) = http_get(&sink_metrics).await?;
            let lags = metric_lags(&metrics, &group);
            let lagging = lags.iter().filter(|(_, lag)| *lag > 0).count();
            if lags.len() == partitions && lagging == partitions {
                Ok(lags)
            } else {
                let exported: Vec<&str> = metrics
                    .lines()
                    .filter(|line| line.starts_with("fieldforce_"))
                    .collect();
                Err(format!("{lags:?} among {exported:?}"))
            }
        },
    )
    .await;
    assert!(metric_lags_seen.iter().map(|(_, lag)| lag).sum::<i64>() > LAGGING_RECORDS);

    poll(
        "the draining sink as LAGGING on the page",
        Duration::from_secs(60),
        || async {
            let overview = overview(&ops).await;
            match group_of(&overview, &group) {
                Some(found) if found["status"] == "LAGGING" => Ok(()),
                found => Err(format!("{found:?}")),
            }
        },
    )
    .await;
    let (draining, status) = lag_command(&config, &group, &topic).await;
    assert_eq!(status, GroupStatus::Lagging, "{draining:?}");
    assert_eq!(draining.members, 1);
    let dom = rendered_dom(format!("{ops}/")).await;
    assert_eq!(dom_status(&dom, &group).as_deref(), Some("LAGGING"));
    let dom_lags = dom_partition_lags(&dom, &group);
    assert_eq!(dom_lags.len(), partitions);
    assert!(dom_lags.iter().map(|(_, lag)| lag).sum::<i64>() > LAGGING_RECORDS);
    screenshot(format!("{ops}/"), screenshot_path("operations-lagging.png")).await;

    // The backlog drains to zero everywhere and the status returns to OK.
    poll(
        "the drained sink as OK on the page",
        Duration::from_secs(120),
        || async {
            let overview = overview(&ops).await;
            match group_of(&overview, &group) {
                Some(found) if found["status"] == "OK" && found["lag_records"] == 0 => Ok(()),
                found => Err(format!("{found:?}")),
            }
        },
    )
    .await;
    let (drained, status) = lag_command(&config, &group, &topic).await;
    assert_eq!(status, GroupStatus::Ok, "{drained:?}");
    assert_eq!(drained.lag_records(), 0);
    poll(
        "zero lag in the sink's metrics",
        Duration::from_secs(30),
        || async {
            let (_, metrics) = http_get(&sink_metrics).await?;
            let lags = metric_lags(&metrics, &group);
            if lags.len() == partitions && lags.iter().all(|(_, lag)| *lag == 0) {
                Ok(())
            } else {
                Err(format!("{lags:?}"))
            }
        },
    )
    .await;
    let dom = rendered_dom(format!("{ops}/")).await;
    assert_eq!(dom_status(&dom, &group).as_deref(), Some("OK"));
    assert!(
        dom_partition_lags(&dom, &group)
            .iter()
            .all(|(_, lag)| *lag == 0)
    );

    sink.stop().await;
    ops_service.stop().await;
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operations_page_renders_in_chromium() {
    // Fails first when chromium is missing, before anything is started.
    chromium();
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let mut config = Config::load(None).expect("configuration loads");
    config.kafka.topic_prefix = format!("test-ops-{suffix}.");
    config.processors.group_id_prefix = config.kafka.topic_prefix.clone();
    config.sink.group_id_prefix = config.kafka.topic_prefix.clone();
    config.ops.sample_interval_ms = 500;
    config.ops.lagging_records = LAGGING_RECORDS;
    fieldforce_kafka::admin::apply(&config.kafka, &Catalog::embedded(), true)
        .await
        .expect("Kafka answers on 127.0.0.1:9092; run `make up` if it does not");

    // Raw records no consumer reads: lag for the validation group, throughput on the raw topic.
    let raw = config.kafka.topic(catalog::SUBMISSIONS_RAW);
    let producer: FutureProducer = producer_config(&config.kafka).create().unwrap();
    for index in 0..120 {
        let key = format!("submission-{index}");
        producer
            .send(
                FutureRecord::to(&raw).key(&key).payload("{}"),
                Duration::from_secs(30),
            )
            .await
            .expect("the broker takes the record");
    }

    let (ops, ops_service) = start_ops(&config).await;
    let own_health = format!("{ops}/healthz");
    assert_eq!(http_get(&own_health).await.unwrap().0, 200);
    let validation = format!(
        "{}{}",
        config.processors.group_id_prefix,
        catalog::PIPELINE_GROUPS[0].0
    );
    poll(
        "the unread raw records on the page",
        Duration::from_secs(30),
        || async {
            let overview = overview(&ops).await;
            match group_of(&overview, &validation) {
                Some(found) if found["lag_records"] == 120 && found["status"] == "STOPPED" => {
                    Ok(())
                }
                found => Err(format!("{found:?}")),
            }
        },
    )
    .await;

    let dom = rendered_dom(format!("{ops}/")).await;
    assert!(dom.contains("data-rendered=\"true\""), "the script ran");
    assert_eq!(dom_status(&dom, &validation).as_deref(), Some("STOPPED"));
    let lags = dom_partition_lags(&dom, &validation);
    assert_eq!(lags.len(), partitions_of(catalog::SUBMISSIONS_RAW));
    assert_eq!(lags.iter().map(|(_, lag)| lag).sum::<i64>(), 120);
    assert!(
        dom.contains(&format!("data-topic=\"{raw}\"")),
        "raw topic row"
    );
    assert!(dom.contains("<svg"), "charts drawn");
    assert!(dom.contains("Dead letters"));

    let (status, metrics) = http_get(&format!("{ops}/metrics")).await.unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics.contains("fieldforce_ops_samples_total"),
        "{metrics}"
    );

    screenshot(format!("{ops}/"), screenshot_path("operations.png")).await;
    ops_service.stop().await;
}
