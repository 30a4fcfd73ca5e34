//! The sink under failure: killed with SIGKILL mid-batch and restarted, and writing to a
//! FerretDB that is stopped and restarted under load. Neither may lose or duplicate a
//! submission.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use fieldforce_runtime::config::Config;

/// FerretDB built by the project's stack scripts.
const FERRETDB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.stack/bin/ferretdb");

fn spawn_sink(config: &Config) -> Child {
    Command::new(env!("CARGO_BIN_EXE_fieldforce-sink"))
        .env("FIELDFORCE_KAFKA__TOPIC_PREFIX", &config.kafka.topic_prefix)
        .env(
            "FIELDFORCE_SINK__GROUP_ID_PREFIX",
            &config.sink.group_id_prefix,
        )
        .env("FIELDFORCE_MONGODB__URI", &config.mongodb.uri)
        .env("FIELDFORCE_MONGODB__DATABASE", &config.mongodb.database)
        .env("FIELDFORCE_SINK__BATCH_MAX_DOCUMENTS", "200")
        .env("FIELDFORCE_SINK__BATCH_LINGER_MS", "50")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("sink binary starts")
}

#[tokio::test]
async fn survives_five_kills_with_one_document_per_submission() {
    let config = test_config();
    create_topics(&config).await;
    let collection = collection(&config).await;

    let total = 5_000;
    let records: Vec<_> = (0..total)
        .map(|index| submission(&format!("k-{index:05}"), 0))
        .collect();
    // Produced in slices while the sink runs, so that kills land under load.
    let mut produced = 0;
    for round in 0..5 {
        let slice = &records[produced..produced + total / 5];
        produce(&config, slice).await;
        produced += slice.len();

        let mut child = spawn_sink(&config);
        // Wait until this run has written something, then kill it mid-stream.
        let before = count(&collection).await;
        wait_until(Duration::from_secs(30), || async {
            count(&collection).await > before
        })
        .await;
        tokio::time::sleep(Duration::from_millis(150 + 100 * round)).await;
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
    }

    let mut child = spawn_sink(&config);
    let caught_up = wait_until(Duration::from_secs(120), || async {
        let (committed, end) = committed_and_end(&config);
        committed == end
    })
    .await;
    child.kill().expect("stop sink");
    child.wait().expect("reaped");

    assert!(
        caught_up,
        "committed offsets {:?}",
        committed_and_end(&config)
    );
    assert_eq!(count(&collection).await, total as u64);
    drop_database(&config).await;
}

/// A FerretDB of this test alone, on its own port and SQLite folder, so that stopping it
/// leaves the shared one running.
struct OwnFerretDb {
    child: Child,
    port: u16,
    directory: tempfile::TempDir,
}

impl OwnFerretDb {
    fn start(port: u16, directory: tempfile::TempDir) -> Self {
        let child = Command::new(FERRETDB)
            .arg(format!("--listen-addr=127.0.0.1:{port}"))
            .arg("--handler=sqlite")
            .arg(format!("--sqlite-url=file:{}/", directory.path().display()))
            .arg("--log-level=error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ferretdb built by make up under .stack/bin");
        Self {
            child,
            port,
            directory,
        }
    }

    fn stop(mut self) -> tempfile::TempDir {
        self.child.kill().expect("stop ferretdb");
        self.child.wait().expect("reaped");
        self.directory
    }
}

#[tokio::test]
async fn catches_up_after_store_outage() {
    let mut config = test_config();
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").port()
    };
    let store = OwnFerretDb::start(port, tempfile::tempdir().expect("temp dir"));
    config.mongodb.uri = format!("mongodb://127.0.0.1:{}/", store.port);
    create_topics(&config).await;
    let collection = collection(&config).await;
    assert!(
        wait_until(Duration::from_secs(20), || async {
            collection.count_documents(bson::doc! {}).await.is_ok()
        })
        .await,
        "own ferretdb answers"
    );

    let (trigger, shutdown) = fieldforce_runtime::shutdown::channel();
    let sink = tokio::spawn(fieldforce_sink_mongodb::run(config.clone(), shutdown));
    let first: Vec<_> = (0..1_000)
        .map(|index| submission(&format!("o-{index:05}"), 0))
        .collect();
    produce(&config, &first).await;
    wait_until(Duration::from_secs(30), || async {
        count(&collection).await > 0
    })
    .await;

    // Outage: the store stays away for 30 s while records keep arriving, 200 every 3 s.
    let directory = store.stop();
    for wave in 0..10 {
        let start = 1_000 + wave * 200;
        let records: Vec<_> = (start..start + 200)
            .map(|index| submission(&format!("o-{index:05}"), 0))
            .collect();
        produce(&config, &records).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let (committed_during_outage, end) = committed_and_end(&config);
    assert!(
        committed_during_outage < end,
        "offsets moved past unwritten records"
    );

    let store = OwnFerretDb::start(port, directory);
    let caught_up = wait_until(Duration::from_secs(120), || async {
        committed_and_end(&config).0 == 3_000
    })
    .await;
    trigger.trigger();
    sink.await.expect("sink task").expect("sink run");

    assert!(
        caught_up,
        "committed offsets {:?}",
        committed_and_end(&config)
    );
    assert_eq!(count(&collection).await, 3_000);
    store.stop();
}
