//! The backlog a drain starts from: generated household-survey submissions turned into raw
//! records exactly as the gateway writes them, and, for the geo and quality processors, into
//! the validated or located records the stage before them would write.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use fieldforce_gateway::instance::parse_instance;
use fieldforce_gateway::xform::parse_xform;
use fieldforce_kafka::catalog::{
    FORMS, PROJECT_SETTINGS, SUBMISSIONS_LOCATED, SUBMISSIONS_RAW, SUBMISSIONS_VALIDATED,
};
use fieldforce_kafka::client::{json_record_headers, producer_config};
use fieldforce_processors::geo::Locator;
use fieldforce_processors::registry::Registry;
use fieldforce_processors::validate::Validator;
use fieldforce_replay::generate::{self, Generator, Kind, ProjectPlan};
use fieldforce_replay::geofences::read_geofences;
use fieldforce_replay::load::plan_projects;
use fieldforce_runtime::config::Config;
use fieldforce_schemas::codec::{Contract, encode};
use fieldforce_schemas::form::FormDefinition;
use fieldforce_schemas::project::{
    Geofence, PROJECT_SETTINGS_VERSION, ProjectSettings, QualityThresholds,
};
use fieldforce_schemas::submission::{
    ProcessedSubmission, RAW_SUBMISSION_VERSION, RawSubmission, SubmissionSource,
};
use rayon::prelude::*;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use sha2::{Digest, Sha256};

/// Organisation of every generated project.
const ORG: &str = "bench-org";
/// Projects, each with the survey form and one real country border as its geofence.
const PROJECTS: usize = 4;
/// Enumerators (and devices) per project.
const ENUMERATORS: usize = 25;
/// Share of generated submissions with a problem. The kinds the gateway rejects are skipped,
/// so what reaches the backlog is a wrong-typed answer or GPS at 0,0 now and then.
const BAD_SHARE: f64 = 0.05;
/// Records generated, converted and sent together. The sends of one chunk are awaited before
/// the next is generated, so the producer's queue never contains more.
const CHUNK: usize = 5_000;

/// The stage whose output a backlog holds, which is the input of the drained subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Raw submissions, as the gateway writes them.
    Raw,
    /// Validated submissions, as the validation processor writes them.
    Validated,
    /// Located submissions, as the geo processor writes them.
    Located,
}

impl Stage {
    /// Parses the name used on the command line.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "raw" => Some(Self::Raw),
            "validated" => Some(Self::Validated),
            "located" => Some(Self::Located),
            _ => None,
        }
    }

    /// Returns the name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Validated => "validated",
            Self::Located => "located",
        }
    }

    /// Returns the schema header of the backlog's records.
    pub fn schema(self) -> String {
        match self {
            Self::Raw => RawSubmission::schema_header(),
            Self::Validated | Self::Located => ProcessedSubmission::schema_header(),
        }
    }

    /// Returns the catalog name of the topic the backlog is written to.
    pub fn topic(self) -> &'static str {
        match self {
            Self::Raw => SUBMISSIONS_RAW,
            Self::Validated => SUBMISSIONS_VALIDATED,
            Self::Located => SUBMISSIONS_LOCATED,
        }
    }
}

/// The projects, forms and settings every backlog is generated for, and the transforms that
/// turn a raw submission into what the validation and geo processors would write.
pub struct World {
    plans: Vec<ProjectPlan>,
    forms: Vec<FormDefinition>,
    settings: Vec<ProjectSettings>,
    forms_registry: Arc<Registry<FormDefinition>>,
    projects_registry: Arc<Registry<ProjectSettings>>,
    validator: Validator,
    locator: Locator,
}

impl World {
    /// Builds the projects from the real country borders of `stack/fetch-boundaries`.
    pub fn load() -> anyhow::Result<Self> {
        let fences = read_geofences(&boundaries_path())?;
        let plans = plan_projects(&fences, 1, PROJECTS);
        let xform = generate::xform();
        let xform_sha256 = hex::encode(Sha256::digest(xform.as_bytes()));

        let mut forms = Vec::new();
        let mut settings = Vec::new();
        for plan in &plans {
            forms.push(parse_xform(
                xform.as_bytes(),
                Config::default().gateway.max_xml_depth,
                ORG,
                &plan.project_id,
                now_ms(),
                xform_sha256.clone(),
            )?);
            let fence = fences
                .iter()
                .find(|fence| fence.interior == plan.inside)
                .context("every plan's inside point comes from a fence")?;
            settings.push(ProjectSettings {
                schema_version: PROJECT_SETTINGS_VERSION,
                org_id: ORG.to_owned(),
                project_id: plan.project_id.clone(),
                geofences: vec![Geofence {
                    id: fence.id.clone(),
                    name: fence.name.clone(),
                    geometry: fence.geometry.clone(),
                }],
                quality: QualityThresholds::default(),
            });
        }

        let form_registry = Arc::new(Registry::default());
        for form in &forms {
            form_registry.put(form.topic_key(), Some(form.clone()));
        }
        let project_registry = Arc::new(Registry::default());
        for project in &settings {
            project_registry.put(project.topic_key(), Some(project.clone()));
        }
        Ok(Self {
            plans,
            forms,
            settings,
            validator: Validator::new(Arc::clone(&form_registry)),
            locator: Locator::new(Arc::clone(&form_registry), Arc::clone(&project_registry)),
            forms_registry: form_registry,
            projects_registry: project_registry,
        })
    }

    /// Returns the form registry the processors would hold after reading the forms topic.
    pub fn forms_registry(&self) -> Arc<Registry<FormDefinition>> {
        Arc::clone(&self.forms_registry)
    }

    /// Returns the project settings registry the processors would hold after reading the
    /// project settings topic.
    pub fn projects_registry(&self) -> Arc<Registry<ProjectSettings>> {
        Arc::clone(&self.projects_registry)
    }

    /// Writes the forms and project settings to their compacted topics, which the processors
    /// read to the end before they start consuming.
    pub async fn publish_settings(&self, config: &Config) -> anyhow::Result<()> {
        let producer: FutureProducer = producer_config(&config.kafka).create()?;
        for form in &self.forms {
            send(
                &producer,
                &config.kafka.topic(FORMS),
                &form.topic_key(),
                form,
            )
            .await?;
        }
        for project in &self.settings {
            let topic = config.kafka.topic(PROJECT_SETTINGS);
            send(&producer, &topic, &project.topic_key(), project).await?;
        }
        Ok(())
    }

    /// Converts a generated submission into the raw record the gateway would write, or `None`
    /// for the kinds the gateway rejects.
    fn raw_submission(&self, generated: &generate::Generated) -> Option<RawSubmission> {
        if matches!(generated.kind, Kind::Malformed | Kind::MissingInstanceId) {
            return None;
        }
        let xml = generated.xml();
        let parsed =
            parse_instance(xml.as_bytes(), Config::default().gateway.max_xml_depth).ok()?;
        Some(RawSubmission {
            schema_version: RAW_SUBMISSION_VERSION,
            submission_id: parsed.instance_id.clone(),
            revision: 0,
            org_id: ORG.to_owned(),
            project_id: self.plans[generated.plan].project_id.clone(),
            form_id: parsed.form_id,
            form_version: parsed.form_version,
            instance_id: Some(parsed.instance_id),
            deprecated_id: parsed.deprecated_id,
            source: SubmissionSource::OpenRosa,
            received_at_ms: now_ms(),
            content_sha256: hex::encode(Sha256::digest(xml)),
            submitter: Some(generated.user.clone()),
            device_id: parsed.device_id,
            fields: parsed.fields,
            attachments: Vec::new(),
            missing_attachments: Vec::new(),
            encrypted: parsed.encrypted,
        })
    }

    /// Returns the record value of `raw` at `stage`, computed by the same transforms the
    /// processors run.
    fn encode_at(&self, stage: Stage, raw: RawSubmission) -> Vec<u8> {
        if stage == Stage::Raw {
            return encode(&raw);
        }
        let validation = self.validator.validate(&raw);
        let mut processed = ProcessedSubmission::from_raw(raw);
        processed.validation = Some(validation);
        if stage == Stage::Located {
            processed.location = Some(self.locator.locate(&processed));
        }
        encode(&processed)
    }
}

/// A backlog record: key, timestamp and value.
pub type BacklogRecord = (String, i64, Vec<u8>);

impl World {
    /// Generates the next `count` records at `stage`.
    fn chunk(&self, generator: &mut Generator, stage: Stage, count: usize) -> Vec<BacklogRecord> {
        let mut raws = Vec::with_capacity(count);
        while raws.len() < count {
            if let Some(raw) = self.raw_submission(&generator.next_submission()) {
                raws.push(raw);
            }
        }
        // Locating a point outside its fence measures the distance to every boundary vertex,
        // so the conversion runs on every core.
        raws.into_par_iter()
            .map(|raw| {
                let key = raw.submission_id.clone();
                let timestamp = raw.received_at_ms;
                (key, timestamp, self.encode_at(stage, raw))
            })
            .collect()
    }
}

/// Generates `records` records at `stage` in memory, the same ones [`produce`] writes for
/// the same seed.
pub fn generate(world: &World, stage: Stage, records: usize, seed: u64) -> Vec<BacklogRecord> {
    let mut generator = Generator::new(seed, world.plans.clone(), ENUMERATORS, BAD_SHARE);
    let mut generated = Vec::with_capacity(records);
    while generated.len() < records {
        let count = CHUNK.min(records - generated.len());
        generated.extend(world.chunk(&mut generator, stage, count));
    }
    generated
}

/// Size of a backlog written to Kafka.
#[derive(Debug, Clone, Copy)]
pub struct Written {
    /// Records written.
    pub records: usize,
    /// Sum of the record values, before compression.
    pub value_bytes: u64,
}

/// Writes `records` submissions at `stage` to the stage's topic and waits until Kafka
/// acknowledged every one. The same seed writes the same answers.
pub async fn produce(
    config: &Config,
    world: &World,
    stage: Stage,
    records: usize,
    seed: u64,
) -> anyhow::Result<Written> {
    // The gateway's producer settings: idempotent, acks=all, lz4.
    let producer: FutureProducer = producer_config(&config.kafka).create()?;
    let topic = config.kafka.topic(stage.topic());
    let schema = stage.schema();
    let mut generator = Generator::new(seed, world.plans.clone(), ENUMERATORS, BAD_SHARE);
    let mut written = Written {
        records: 0,
        value_bytes: 0,
    };
    while written.records < records {
        let chunk = world.chunk(&mut generator, stage, CHUNK.min(records - written.records));
        let sends = chunk.iter().map(|(key, timestamp, value)| {
            producer.send(
                FutureRecord::to(&topic)
                    .key(key)
                    .payload(value)
                    .headers(json_record_headers(&schema))
                    .timestamp(*timestamp),
                Timeout::After(Duration::from_secs(60)),
            )
        });
        for result in futures::future::join_all(sends).await {
            result
                .map_err(|(error, _)| error)
                .with_context(|| format!("writing the backlog to {topic} failed"))?;
        }
        written.records += chunk.len();
        written.value_bytes += chunk
            .iter()
            .map(|(_, _, value)| value.len() as u64)
            .sum::<u64>();
    }
    Ok(written)
}

async fn send<T: Contract>(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    value: &T,
) -> anyhow::Result<()> {
    let payload = encode(value);
    let record = FutureRecord::to(topic)
        .key(key)
        .payload(&payload)
        .headers(json_record_headers(&T::schema_header()))
        .timestamp(now_ms());
    producer
        .send(record, Timeout::After(Duration::from_secs(30)))
        .await
        .map_err(|(error, _)| error)
        .with_context(|| format!("writing {key} to {topic} failed"))?;
    Ok(())
}

/// Path of the real country borders installed by `stack/fetch-boundaries`.
fn boundaries_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../.stack/boundaries/countries-land-10km-0.6.0/map.geo.json")
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}
