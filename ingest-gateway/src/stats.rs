//! The stats endpoint: `GET /v1/projects/{project}/stats?from=YYYY-MM-DD&to=YYYY-MM-DD` returns
//! a project's daily figures and its per-enumerator daily figures over an inclusive range of
//! days, as the analytics aggregator stored them in `analytics_daily`.

use std::time::Duration;

use bson::doc;
use chrono::NaiveDate;
use fieldforce_schemas::analytics::{DailyDocument, Scope};
use futures::TryStreamExt;
use mongodb::Collection;
use serde_json::{Map, Value, json};

use crate::error::GatewayError;

/// Maximum range of one request, in days, both ends counted.
pub const MAX_RANGE_DAYS: i64 = 366;

/// Maximum documents in one response. A range with more must be split.
const MAX_ROWS: i64 = 50_000;

/// How long reading the figures may take before the request fails with 503.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// An inclusive range of days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayRange {
    /// First day.
    pub from: NaiveDate,
    /// Last day, not before `from`.
    pub to: NaiveDate,
}

/// Parses `from` and `to` from a query string, checking the order and the length of the range.
pub fn parse_range(query: Option<&str>) -> Result<DayRange, GatewayError> {
    let mut from = None;
    let mut to = None;
    for pair in query.unwrap_or_default().split('&') {
        match pair.split_once('=') {
            Some(("from", value)) if from.is_none() => from = Some(value),
            Some(("to", value)) if to.is_none() => to = Some(value),
            _ => {}
        }
    }
    let from = parse_day("from", from)?;
    let to = parse_day("to", to)?;
    if from > to {
        return Err(GatewayError::BadRequest(format!(
            "from {from} is after to {to}: the range is inclusive, so send from <= to"
        )));
    }
    let days = (to - from).num_days() + 1;
    if days > MAX_RANGE_DAYS {
        return Err(GatewayError::BadRequest(format!(
            "the range {from} to {to} spans {days} days, more than the maximum of {MAX_RANGE_DAYS}: ask for a shorter range"
        )));
    }
    Ok(DayRange { from, to })
}

fn parse_day(name: &str, value: Option<&str>) -> Result<NaiveDate, GatewayError> {
    let Some(value) = value.filter(|value| !value.is_empty()) else {
        return Err(GatewayError::BadRequest(format!(
            "query parameter {name} is missing: send from=YYYY-MM-DD&to=YYYY-MM-DD"
        )));
    };
    NaiveDate::parse_from_str(value, "%Y-%m-%d").map_err(|_| {
        GatewayError::BadRequest(format!(
            "query parameter {name} {value:?} is not a valid date: use YYYY-MM-DD"
        ))
    })
}

/// Reads the figures of a project over a range and builds the response body. Days and
/// enumerators without a submission are left out.
pub async fn project_stats(
    collection: &Collection<DailyDocument>,
    org_id: &str,
    project_id: &str,
    range: DayRange,
) -> Result<Value, GatewayError> {
    let (from, to) = (
        range.from.format("%Y-%m-%d").to_string(),
        range.to.format("%Y-%m-%d").to_string(),
    );
    // Days are stored as YYYY-MM-DD, so the string order is the date order.
    let filter = doc! {
        "org_id": org_id,
        "project_id": project_id,
        "day": { "$gte": &from, "$lte": &to },
        "submissions": { "$gt": 0_i64 },
    };
    let read = async {
        collection
            .find(filter)
            .limit(MAX_ROWS + 1)
            .await?
            .try_collect::<Vec<DailyDocument>>()
            .await
    };
    let mut documents = match tokio::time::timeout(READ_TIMEOUT, read).await {
        Ok(Ok(documents)) => documents,
        Ok(Err(error)) => return Err(GatewayError::StatsUnavailable(error.to_string())),
        Err(_) => return Err(GatewayError::StatsUnavailable("timed out".to_owned())),
    };
    if documents.len() as i64 > MAX_ROWS {
        return Err(GatewayError::BadRequest(format!(
            "the range {from} to {to} contains more than {MAX_ROWS} rows: ask for a shorter range"
        )));
    }
    documents.sort_by(|a, b| (&a.day, &a.enumerator).cmp(&(&b.day, &b.enumerator)));

    let mut days = Vec::new();
    let mut enumerators = Vec::new();
    for document in documents {
        let mut row = Map::new();
        row.insert("day".into(), json!(document.day));
        if let Some(enumerator) = &document.enumerator {
            row.insert("enumerator".into(), json!(enumerator.id));
            row.insert(
                "enumerator_source".into(),
                json!(enumerator.source.as_str()),
            );
        }
        if let Ok(Value::Object(figures)) = serde_json::to_value(&document.figures) {
            row.extend(figures);
        }
        // Absent figures read as null, so every row has the same keys.
        for key in ["mean_quality_score", "median_interview_duration_s"] {
            row.entry(key).or_insert(Value::Null);
        }
        match document.scope {
            Scope::Project => days.push(Value::Object(row)),
            Scope::Enumerator => enumerators.push(Value::Object(row)),
        }
    }
    Ok(json!({
        "project_id": project_id,
        "from": from,
        "to": to,
        "days": days,
        "enumerators": enumerators,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(query: &str) -> String {
        parse_range(Some(query)).unwrap_err().to_string()
    }

    #[test]
    fn range_parses_inclusive_days() {
        let range = parse_range(Some("from=2024-05-01&to=2024-05-01")).unwrap();
        assert_eq!(range.from, range.to);
        let full_year = parse_range(Some("to=2024-12-31&from=2024-01-01")).unwrap();
        assert_eq!((full_year.to - full_year.from).num_days() + 1, 366);
    }

    #[test]
    fn bad_ranges_explain_themselves() {
        assert!(message("to=2024-05-01").contains("from is missing"));
        assert!(message("from=2024-05-01").contains("to is missing"));
        assert!(message("from=2024-13-01&to=2024-12-01").contains("not a valid date"));
        assert!(message("from=01/05/2024&to=2024-05-01").contains("YYYY-MM-DD"));
        assert!(message("from=2024-05-02&to=2024-05-01").contains("is after"));
        assert!(message("from=2023-01-01&to=2024-05-01").contains("maximum of 366"));
        assert!(parse_range(None).is_err());
    }
}
