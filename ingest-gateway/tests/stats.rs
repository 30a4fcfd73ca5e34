//! The stats endpoint against the local stack: a range returns the project's daily rows and
//! its enumerator rows from `analytics_daily`, and a bad range gets a 400 with the reason.

mod support;

use std::collections::BTreeMap;

use fieldforce_schemas::analytics::{
    DAILY_COLLECTION, DailyDocument, DailyFigures, Enumerator, EnumeratorSource, Scope, daily_id,
};
use serde_json::Value;
use support::{CENSUS_TOKEN, DEV_TOKEN, Gateway, test_config};

fn document(
    org_id: &str,
    project_id: &str,
    day: &str,
    enumerator: Option<&str>,
    submissions: i64,
) -> DailyDocument {
    let enumerator = enumerator.map(|id| Enumerator {
        source: EnumeratorSource::Submitter,
        id: id.to_owned(),
    });
    DailyDocument {
        id: daily_id(org_id, project_id, day, enumerator.as_ref()),
        org_id: org_id.into(),
        project_id: project_id.into(),
        day: day.into(),
        scope: if enumerator.is_some() {
            Scope::Enumerator
        } else {
            Scope::Project
        },
        enumerator,
        figures: DailyFigures {
            submissions,
            scored_submissions: submissions,
            mean_quality_score: (submissions > 0).then_some(87.5),
            quality_flags: BTreeMap::from([("too_fast".to_owned(), 1)]),
            outside_geofence: 1,
            timed_submissions: submissions,
            median_interview_duration_s: (submissions > 0).then_some(610.5),
        },
        version: 1,
    }
}

async fn get(gateway: &Gateway, path: &str, token: &str) -> (u16, Value) {
    let answer = gateway
        .send(
            "GET",
            path,
            &[("authorization", format!("Bearer {token}"))],
            "",
        )
        .await;
    let body = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
    (answer.status, body)
}

#[tokio::test]
async fn stats_range_returns_rows() {
    let config = test_config();
    let client = mongodb::Client::with_uri_str(&config.mongodb.uri)
        .await
        .expect("mongodb client");
    let database = client.database(&config.mongodb.database);
    database
        .collection::<DailyDocument>(DAILY_COLLECTION)
        .insert_many([
            document("acme", "census", "2024-04-30", None, 9),
            document("acme", "census", "2024-05-01", None, 3),
            document("acme", "census", "2024-05-01", Some("ama"), 2),
            document("acme", "census", "2024-05-01", Some("kofi"), 1),
            document("acme", "census", "2024-05-02", Some("moved-away"), 0),
            document("acme", "census", "2024-05-03", None, 4),
            document("acme", "census", "2024-05-04", None, 5),
            document("other-org", "census", "2024-05-02", None, 7),
        ])
        .await
        .expect("mongodb on 127.0.0.1:27017 must be running (make up)");
    let gateway = Gateway::start(config.clone()).await;

    let (status, body) = get(
        &gateway,
        "/v1/projects/census/stats?from=2024-05-01&to=2024-05-03",
        CENSUS_TOKEN,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let days: Vec<&str> = body["days"]
        .as_array()
        .expect("days is an array")
        .iter()
        .map(|row| row["day"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(days, vec!["2024-05-01", "2024-05-03"]);
    let first = &body["days"][0];
    assert_eq!(first["submissions"], 3);
    assert_eq!(first["mean_quality_score"], 87.5);
    assert_eq!(first["quality_flags"]["too_fast"], 1);
    assert_eq!(first["outside_geofence"], 1);
    assert_eq!(first["median_interview_duration_s"], 610.5);

    let enumerators: Vec<(&str, &str)> = body["enumerators"]
        .as_array()
        .expect("enumerators is an array")
        .iter()
        .map(|row| {
            (
                row["enumerator"].as_str().unwrap_or_default(),
                row["enumerator_source"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        enumerators,
        vec![("ama", "submitter"), ("kofi", "submitter")],
        "rows without submissions are left out"
    );

    // The development token belongs to another organisation, which has no figures here.
    let (status, body) = get(
        &gateway,
        "/v1/projects/census/stats?from=2024-05-01&to=2024-05-03",
        DEV_TOKEN,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["days"].as_array().map(Vec::len), Some(0));

    gateway.stop().await;
    let _ = database.drop().await;
}

#[tokio::test]
async fn stats_bad_range_is_rejected() {
    let gateway = Gateway::start(test_config()).await;
    let cases = [
        ("", "from is missing"),
        ("?from=2024-05-01", "to is missing"),
        ("?from=2024-02-30&to=2024-03-01", "not a valid date"),
        ("?from=yesterday&to=2024-03-01", "YYYY-MM-DD"),
        ("?from=2024-05-02&to=2024-05-01", "is after"),
        ("?from=2023-01-01&to=2024-12-31", "maximum of 366"),
    ];
    for (query, expected) in cases {
        let (status, body) = get(
            &gateway,
            &format!("/v1/projects/census/stats{query}"),
            CENSUS_TOKEN,
        )
        .await;
        assert_eq!(status, 400, "{query}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(expected), "{query}: {message}");
    }

    let (status, _) = get(
        &gateway,
        "/v1/projects/water/stats?from=2024-05-01&to=2024-05-02",
        CENSUS_TOKEN,
    )
    .await;
    assert_eq!(status, 403, "a token limited to census may not read water");
    let answer = gateway
        .send(
            "GET",
            "/v1/projects/census/stats?from=2024-05-01&to=2024-05-02",
            &[],
            "",
        )
        .await;
    assert_eq!(answer.status, 401);
    gateway.stop().await;
}
