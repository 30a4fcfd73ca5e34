//! The geo processor: converts every geometry answer to GeoJSON, picks the primary point,
//! reports GPS problems, and tests the point against the project's geofences. It reads
//! `submissions.validated` and writes `submissions.located` with the `location` section set.
//!
//! Answer types come from the registered form when it is known. For an unknown form, text
//! shaped like an OpenRosa geometry (three or four numbers per vertex, vertices separated by
//! `;`) is recognised as a geopoint, geotrace or geoshape. CommCare writes the device location
//! into `meta/location`, which serves as the primary point when no geopoint answer exists.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use fieldforce_kafka::catalog::{
    FORMS, PROJECT_SETTINGS, SUBMISSIONS_LOCATED, SUBMISSIONS_VALIDATED,
};
use fieldforce_runtime::config::Config;
use fieldforce_runtime::shutdown::Shutdown;
use fieldforce_schemas::codec::Contract;
use fieldforce_schemas::form::FormDefinition;
use fieldforce_schemas::odk::{self, GeoVertex};
use fieldforce_schemas::project::ProjectSettings;
use fieldforce_schemas::submission::{GeometryField, Location, ProcessedSubmission};
use geo_types::Point;
use rdkafka::message::OwnedMessage;

use crate::ProcessorError;
use crate::error::Unprocessable;
use crate::fields::{Answer, for_each_leaf, leaf_text, texts_at};
use crate::geofence::FenceIndex;
use crate::pipeline::{self, Output, StageSpec, Transform};
use crate::record::{OwnSections, ProcessedView, encode_output};
use crate::registry::{Registry, caught_up_registry};

/// Topics and consumer group of the geo processor.
pub const SPEC: StageSpec = StageSpec {
    stage: "geo",
    service: "geo",
    group_id: "fieldforce-geo",
    input: SUBMISSIONS_VALIDATED,
    output: SUBMISSIONS_LOCATED,
};

/// Problem code: the submission has no usable geopoint.
pub const GPS_MISSING: &str = "gps_missing";
/// Problem code: a latitude or longitude is outside its valid range.
pub const GPS_OUT_OF_RANGE: &str = "gps_out_of_range";
/// Problem code: the primary point is exactly 0,0, which devices report without a fix.
pub const GPS_NULL_ISLAND: &str = "gps_null_island";

/// Path of the device location in CommCare submissions.
const COMMCARE_LOCATION: &str = "meta/location";

/// A fence index and the settings record it was built from.
type BuiltIndex = (Arc<ProjectSettings>, Arc<FenceIndex>);

/// The geo transform.
#[derive(Debug)]
pub struct Locator {
    forms: Arc<Registry<FormDefinition>>,
    projects: Arc<Registry<ProjectSettings>>,
    /// Fence index per project, rebuilt when the project's settings record changes.
    indexes: Mutex<HashMap<String, BuiltIndex>>,
}

impl Locator {
    /// Creates a locator over the forms and project-settings registries.
    pub fn new(
        forms: Arc<Registry<FormDefinition>>,
        projects: Arc<Registry<ProjectSettings>>,
    ) -> Self {
        Self {
            forms,
            projects,
            indexes: Mutex::new(HashMap::new()),
        }
    }

    /// Returns the fence index of the project's current settings, building it on first use
    /// and after every settings change.
    fn fences(&self, org_id: &str, project_id: &str) -> Option<Arc<FenceIndex>> {
        let settings = self.projects.project(org_id, project_id)?;
        let key = settings.topic_key();
        let mut indexes = self.indexes.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((built_from, index)) = indexes.get(&key)
            && Arc::ptr_eq(built_from, &settings)
        {
            return Some(Arc::clone(index));
        }
        let (index, invalid) = FenceIndex::from_geofences(&settings.geofences);
        for fence in invalid {
            tracing::warn!(project = %key, geofence = %fence.id, reason = %fence.reason, "invalid geofence skipped");
        }
        tracing::info!(project = %key, fences = index.len(), "geofence index built");
        let index = Arc::new(index);
        indexes.insert(key, (settings, Arc::clone(&index)));
        Some(index)
    }

    /// Computes the location section of a submission.
    pub fn locate(&self, processed: &ProcessedSubmission) -> Location {
        let submission = &processed.submission;
        self.locate_in_project(
            &submission.org_id,
            &submission.project_id,
            &submission.form_id,
            submission.form_version.as_deref(),
            &Answer::group_of(&submission.fields),
        )
    }

    /// Computes the location section from the answers to a form version of a project.
    fn locate_in_project(
        &self,
        org_id: &str,
        project_id: &str,
        form_id: &str,
        version: Option<&str>,
        fields: &Answer<'_>,
    ) -> Location {
        let form = self.forms.form(org_id, project_id, form_id, version);
        let fences = self.fences(org_id, project_id);
        locate_answers(fields, form.as_deref(), fences.as_deref())
    }
}

impl Transform for Locator {
    fn transform(&self, message: &OwnedMessage) -> Result<Output, Unprocessable> {
        let view = ProcessedView::decode(message)?;
        let submission = &view.submission;
        let location = self.locate_in_project(
            &submission.org_id,
            &submission.project_id,
            &submission.form_id,
            submission.form_version.as_deref(),
            &submission.fields,
        );
        // The contract types have no map with non-string keys and no fallible Serialize.
        let location_json = serde_json::to_vec(&location).expect("location always serializes");
        // A record located before, or one with a later section, gets its location replaced
        // in place.
        let value = encode_output(
            message,
            view.location.is_none() && !view.has_quality && !view.has_processing_status,
            &[("location", &location_json)],
            OwnSections::Location,
            |processed| processed.location = Some(location),
        )?;
        Ok(Output {
            value,
            key: view.submission.submission_id.into_owned(),
            schema: ProcessedSubmission::schema_header(),
        })
    }
}

/// Runs the geo processor until shutdown.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), ProcessorError> {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = crate::metrics::Metrics::register(
        &mut registry,
        SPEC.stage,
        &pipeline::group_id(&config, &SPEC),
    );
    let ready = crate::admin::start(&config, registry, shutdown.clone()).await?;

    let forms = caught_up_registry::<FormDefinition>(&config, FORMS, shutdown.clone()).await?;
    let projects =
        caught_up_registry::<ProjectSettings>(&config, PROJECT_SETTINGS, shutdown.clone()).await?;
    ready.set();

    let transform = Arc::new(Locator::new(forms, projects));
    pipeline::run(&config, SPEC, transform, metrics, shutdown).await
}

/// A geometry answer found in a submission.
struct Found {
    path: String,
    data_type: &'static str,
    vertices: Vec<GeoVertex>,
    text: String,
}

/// Recognises text shaped like an OpenRosa geometry: every vertex has three or four numbers.
fn geometry_type_of(text: &str) -> Option<&'static str> {
    let vertices = odk::parse_geopoints(text).ok()?;
    let shaped = text
        .split(';')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .all(|part| part.split_whitespace().count() >= 3);
    if !shaped || vertices.is_empty() {
        return None;
    }
    if !text.contains(';') {
        return (vertices.len() == 1).then_some("geopoint");
    }
    let closed = vertices.len() >= 4
        && vertices.first().map(GeoVertex::position) == vertices.last().map(GeoVertex::position);
    match vertices.len() {
        1 => Some("geopoint"),
        _ if closed => Some("geoshape"),
        _ => Some("geotrace"),
    }
}

fn static_type(data_type: &str) -> Option<&'static str> {
    match data_type {
        "geopoint" => Some("geopoint"),
        "geotrace" => Some("geotrace"),
        "geoshape" => Some("geoshape"),
        _ => None,
    }
}

fn find_geometries(fields: &Answer<'_>, form: Option<&FormDefinition>) -> Vec<Found> {
    let mut found = Vec::new();
    let mut push = |path: &str, data_type: &'static str, text: &str| {
        if let Ok(vertices) = odk::parse_geopoints(text)
            && !vertices.is_empty()
        {
            found.push(Found {
                path: format!("/{path}"),
                data_type,
                vertices,
                text: text.to_owned(),
            });
        }
    };
    match form {
        Some(form) => {
            for field in &form.fields {
                let Some(data_type) = static_type(&field.data_type) else {
                    continue;
                };
                for text in texts_at(fields, &field.path) {
                    push(&field.path, data_type, &text);
                }
            }
            if !form
                .fields
                .iter()
                .any(|field| field.path == COMMCARE_LOCATION)
            {
                for text in texts_at(fields, COMMCARE_LOCATION) {
                    if geometry_type_of(&text) == Some("geopoint") {
                        push(COMMCARE_LOCATION, "geopoint", &text);
                    }
                }
            }
        }
        None => {
            for_each_leaf(fields, |path, answer| {
                if let Some(text) = leaf_text(answer)
                    && let Some(data_type) = geometry_type_of(&text)
                {
                    push(path, data_type, &text);
                }
            });
        }
    }
    found
}

/// Computes the location section from a submission, its form (when known) and the
/// project's fences (when it has any).
pub fn locate_submission(
    processed: &ProcessedSubmission,
    form: Option<&FormDefinition>,
    fences: Option<&FenceIndex>,
) -> Location {
    locate_answers(
        &Answer::group_of(&processed.submission.fields),
        form,
        fences,
    )
}

/// Computes the location section from a submission's answers, its form (when known) and the
/// project's fences (when it has any).
fn locate_answers(
    fields: &Answer<'_>,
    form: Option<&FormDefinition>,
    fences: Option<&FenceIndex>,
) -> Location {
    let mut location = Location {
        point: None,
        accuracy_m: None,
        source_field: None,
        geometries: Vec::new(),
        geofence: None,
        problems: Vec::new(),
    };
    let add_problem = |problems: &mut Vec<String>, code: &str| {
        if !problems.iter().any(|known| known == code) {
            problems.push(code.to_owned());
        }
    };

    let found = find_geometries(fields, form);
    for geometry in &found {
        if !geometry.vertices.iter().all(GeoVertex::in_range) {
            // MongoDB's 2dsphere index rejects such coordinates, so the geometry is left out.
            add_problem(&mut location.problems, GPS_OUT_OF_RANGE);
            continue;
        }
        if let Ok(geojson) = odk::to_geojson(geometry.data_type, &geometry.text) {
            location.geometries.push(GeometryField {
                path: geometry.path.clone(),
                geometry: geojson,
            });
        }
    }

    // CommCare's meta/location is found last, so a geopoint answer is preferred over it.
    let Some(primary) = found
        .iter()
        .find(|geometry| geometry.data_type == "geopoint")
    else {
        add_problem(&mut location.problems, GPS_MISSING);
        return location;
    };
    let vertex = primary.vertices[0];
    location.source_field = Some(primary.path.clone());
    location.accuracy_m = vertex.accuracy;
    if !vertex.in_range() {
        return location;
    }
    if vertex.latitude == 0.0 && vertex.longitude == 0.0 {
        add_problem(&mut location.problems, GPS_NULL_ISLAND);
        return location;
    }
    location.point = Some(serde_json::json!({ "type": "Point", "coordinates": vertex.position() }));
    if let Some(fences) = fences {
        location.geofence = fences.locate(Point::new(vertex.longitude, vertex.latitude));
    }
    location
}

#[cfg(test)]
mod tests {
    use fieldforce_schemas::form::FormField;
    use fieldforce_schemas::project::Geofence;
    use fieldforce_schemas::submission::{RawSubmission, SubmissionSource};
    use serde_json::{Value, json};

    use super::*;

    fn processed(fields: Value) -> ProcessedSubmission {
        ProcessedSubmission::from_raw(RawSubmission {
            schema_version: 1,
            submission_id: "s1".into(),
            revision: 0,
            org_id: "org".into(),
            project_id: "p".into(),
            form_id: "f".into(),
            form_version: None,
            instance_id: None,
            deprecated_id: None,
            source: SubmissionSource::OpenRosa,
            received_at_ms: 0,
            content_sha256: String::new(),
            submitter: None,
            device_id: None,
            fields: match fields {
                Value::Object(map) => map,
                _ => panic!("fixture is an object"),
            },
            attachments: Vec::new(),
            missing_attachments: Vec::new(),
            encrypted: None,
        })
    }

    fn form(fields: &[(&str, &str)]) -> FormDefinition {
        FormDefinition {
            schema_version: 1,
            org_id: "org".into(),
            project_id: "p".into(),
            form_id: "f".into(),
            version: String::new(),
            title: None,
            fields: fields
                .iter()
                .map(|(path, data_type)| FormField {
                    path: (*path).to_owned(),
                    data_type: (*data_type).to_owned(),
                    required: false,
                    choices: Vec::new(),
                    repeat: false,
                })
                .collect(),
            registered_at_ms: 0,
            xform_sha256: String::new(),
        }
    }

    #[test]
    fn known_form_geometries_become_geojson() {
        let form = form(&[
            ("gps", "geopoint"),
            ("trace", "geotrace"),
            ("shape", "geoshape"),
        ]);
        let submission = processed(json!({
            "gps": "43.3149254 -1.9869671 71.8 15.478",
            "trace": "43.31 -1.98 71.8 10.0;43.32 -1.99 71.8 10.0;",
            "shape": "0.1 0.1 0 0;0.1 0.2 0 0;0.2 0.2 0 0;0.1 0.1 0 0;"
        }));
        let location = locate_submission(&submission, Some(&form), None);
        assert_eq!(
            location.point,
            Some(json!({"type": "Point", "coordinates": [-1.9869671, 43.3149254]}))
        );
        assert_eq!(location.accuracy_m, Some(15.478));
        assert_eq!(location.source_field.as_deref(), Some("/gps"));
        let types: Vec<&str> = location
            .geometries
            .iter()
            .filter_map(|g| g.geometry["type"].as_str())
            .collect();
        assert_eq!(types, vec!["Point", "LineString", "Polygon"]);
        assert!(location.problems.is_empty());
    }

    #[test]
    fn commcare_meta_location_is_primary_for_unknown_form() {
        let submission = processed(
            json!({"reg_date": "2013-09-01", "meta": {"location": "42.3739063 -71.1109113 0.0 886.0"}}),
        );
        let location = locate_submission(&submission, None, None);
        assert_eq!(location.source_field.as_deref(), Some("/meta/location"));
        assert_eq!(location.accuracy_m, Some(886.0));
        assert_eq!(
            location.point,
            Some(json!({"type": "Point", "coordinates": [-71.1109113, 42.3739063]}))
        );
    }

    #[test]
    fn gps_problems_are_reported() {
        let missing = locate_submission(&processed(json!({"q": "1"})), None, None);
        assert_eq!(missing.problems, vec![GPS_MISSING]);

        let null_island = locate_submission(&processed(json!({"gps": "0 0 0 0"})), None, None);
        assert_eq!(null_island.problems, vec![GPS_NULL_ISLAND]);
        assert!(null_island.point.is_none());

        let out_of_range =
            locate_submission(&processed(json!({"gps": "95.0 200.0 0 5"})), None, None);
        assert_eq!(out_of_range.problems, vec![GPS_OUT_OF_RANGE]);
        assert!(out_of_range.point.is_none());
        assert!(out_of_range.geometries.is_empty());
    }

    #[test]
    fn other_numbers_are_not_geometries() {
        let submission =
            processed(json!({"barcode": "000049499094", "age": "12 3", "date": "2018-04-26"}));
        let location = locate_submission(&submission, None, None);
        assert!(location.geometries.is_empty());
        assert_eq!(location.problems, vec![GPS_MISSING]);
    }

    #[test]
    fn geofence_result_is_attached() {
        let fence = Geofence {
            id: "zone".into(),
            name: String::new(),
            geometry: json!({"type": "Polygon", "coordinates": [[[36.0, -2.0], [37.0, -2.0], [37.0, -1.0], [36.0, -1.0], [36.0, -2.0]]]}),
        };
        let (index, _) = FenceIndex::from_geofences(&[fence]);
        let location = locate_submission(
            &processed(json!({"gps": "-1.5 36.5 0 5"})),
            None,
            Some(&index),
        );
        let geofence = location.geofence.expect("fences exist");
        assert!(geofence.inside);
        assert_eq!(geofence.geofence_id, "zone");
    }

    fn message(submission: &ProcessedSubmission) -> OwnedMessage {
        OwnedMessage::new(
            Some(fieldforce_schemas::codec::encode(submission)),
            None,
            "submissions.validated".to_owned(),
            rdkafka::Timestamp::NotAvailable,
            0,
            0,
            None,
        )
    }

    #[test]
    fn appended_location_matches_full_encoding() {
        let locator = Locator::new(Arc::default(), Arc::default());
        let mut submission = processed(json!({"gps": "-1.5 36.5 0 5", "name": "Ama"}));
        submission.validation = Some(fieldforce_schemas::submission::Validation {
            valid: true,
            form_known: false,
            form_version: None,
            issues: Vec::new(),
        });
        let output = locator
            .transform(&message(&submission))
            .expect("transforms");
        let mut expected = submission.clone();
        expected.location = Some(locator.locate(&submission));
        assert_eq!(
            String::from_utf8_lossy(&output.value),
            String::from_utf8_lossy(&fieldforce_schemas::codec::encode(&expected))
        );
    }

    #[test]
    fn located_record_relocated_in_place() {
        let locator = Locator::new(Arc::default(), Arc::default());
        let mut submission = processed(json!({"gps": "-1.5 36.5 0 5"}));
        submission.location = Some(locate_submission(&processed(json!({})), None, None));
        submission.processing_status =
            Some(fieldforce_schemas::submission::ProcessingStatus::Processed);
        let output = locator
            .transform(&message(&submission))
            .expect("transforms");
        let relocated: ProcessedSubmission =
            fieldforce_schemas::codec::decode(&output.value).expect("output decodes");
        assert_eq!(relocated.location, Some(locator.locate(&submission)));
        assert_eq!(relocated.processing_status, submission.processing_status);
    }
}
