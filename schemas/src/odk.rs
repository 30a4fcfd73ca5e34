//! Value formats written by OpenRosa clients, and the field-name encoding that makes answers
//! safe to store as MongoDB documents.

use chrono::{DateTime, FixedOffset, NaiveDate};

/// One vertex of an OpenRosa geopoint, geotrace or geoshape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GeoVertex {
    /// Latitude in degrees.
    pub latitude: f64,
    /// Longitude in degrees.
    pub longitude: f64,
    /// Altitude in metres, when sent.
    pub altitude: Option<f64>,
    /// Accuracy radius in metres, when sent.
    pub accuracy: Option<f64>,
}

impl GeoVertex {
    /// Returns the GeoJSON position, `[lon, lat]`.
    pub fn position(&self) -> [f64; 2] {
        [self.longitude, self.latitude]
    }

    /// Whether latitude and longitude are inside their valid ranges.
    pub fn in_range(&self) -> bool {
        (-90.0..=90.0).contains(&self.latitude) && (-180.0..=180.0).contains(&self.longitude)
    }
}

/// A value that is not a valid OpenRosa geometry or timestamp.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: {reason}")]
pub struct FormatError {
    /// What was being parsed: `geopoint`, `geotrace`, `dateTime`, ...
    pub kind: &'static str,
    /// The text as received.
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

fn format_error(kind: &'static str, value: &str, reason: &'static str) -> FormatError {
    FormatError {
        kind,
        value: value.to_owned(),
        reason,
    }
}

/// Parses a geopoint: `lat lon [altitude [accuracy]]`, separated by spaces.
pub fn parse_geopoint(text: &str) -> Result<GeoVertex, FormatError> {
    let mut numbers = Vec::with_capacity(4);
    for part in text.split_whitespace() {
        let number: f64 = part
            .parse()
            .map_err(|_| format_error("geopoint", text, "a component is not a number"))?;
        if !number.is_finite() {
            return Err(format_error("geopoint", text, "a component is not finite"));
        }
        numbers.push(number);
    }
    if !(2..=4).contains(&numbers.len()) {
        return Err(format_error(
            "geopoint",
            text,
            "expected latitude, longitude and optional altitude and accuracy",
        ));
    }
    Ok(GeoVertex {
        latitude: numbers[0],
        longitude: numbers[1],
        altitude: numbers.get(2).copied(),
        accuracy: numbers.get(3).copied(),
    })
}

/// Parses a geotrace or geoshape: geopoints separated by `;`. A trailing `;` and spaces after
/// each `;` are tolerated, as clients write both.
pub fn parse_geopoints(text: &str) -> Result<Vec<GeoVertex>, FormatError> {
    text.split(';')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(parse_geopoint)
        .collect()
}

/// Builds the GeoJSON geometry of an answer of the given XForm type (`geopoint`, `geotrace`,
/// `geoshape`). A geoshape is closed if the client left it open.
pub fn to_geojson(data_type: &str, text: &str) -> Result<serde_json::Value, FormatError> {
    match data_type {
        "geopoint" => {
            let vertex = parse_geopoint(text)?;
            Ok(serde_json::json!({ "type": "Point", "coordinates": vertex.position() }))
        }
        "geotrace" => {
            let vertices = parse_geopoints(text)?;
            if vertices.len() < 2 {
                return Err(format_error("geotrace", text, "needs at least two points"));
            }
            let line: Vec<[f64; 2]> = vertices.iter().map(GeoVertex::position).collect();
            Ok(serde_json::json!({ "type": "LineString", "coordinates": line }))
        }
        "geoshape" => {
            let vertices = parse_geopoints(text)?;
            let mut ring: Vec<[f64; 2]> = vertices.iter().map(GeoVertex::position).collect();
            if let Some(&first) = ring.first()
                && ring.last() != Some(&first)
            {
                ring.push(first);
            }
            // A closed ring repeats its first vertex, so a triangle has four positions.
            if ring.len() < 4 {
                return Err(format_error(
                    "geoshape",
                    text,
                    "needs at least three distinct points",
                ));
            }
            Ok(serde_json::json!({ "type": "Polygon", "coordinates": [ring] }))
        }
        _ => Err(format_error("geometry", text, "not a geometry type")),
    }
}

/// Parses an XForm dateTime. Offsets may be written `Z`, `+03:00`, `+0300` or `+03` (hours
/// only, meaning `+03:00`). A value without an offset is taken as UTC.
pub fn parse_datetime(text: &str) -> Result<DateTime<FixedOffset>, FormatError> {
    let text = text.trim();
    let invalid = || {
        format_error(
            "dateTime",
            text,
            "expected YYYY-MM-DDThh:mm:ss[.fff][offset]",
        )
    };
    let (date_time, offset) = split_offset(text);
    // The usual value ends in `Z` or `+hh:mm` already, and parses without a rewritten copy.
    let written_as_rfc3339 = match offset {
        Some("Z") => text.ends_with('Z'),
        Some(offset) => is_rfc3339_offset(offset),
        None => false,
    };
    if written_as_rfc3339 {
        return DateTime::parse_from_rfc3339(text).map_err(|_| invalid());
    }
    let offset = match offset {
        None | Some("Z") | Some("z") => "+00:00".to_owned(),
        Some(offset) => normalize_offset(offset).ok_or_else(invalid)?,
    };
    DateTime::parse_from_rfc3339(&format!("{date_time}{offset}")).map_err(|_| invalid())
}

/// Parses an XForm date (`YYYY-MM-DD`).
pub fn parse_date(text: &str) -> Result<NaiveDate, FormatError> {
    NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
        .map_err(|_| format_error("date", text, "expected YYYY-MM-DD"))
}

/// Splits `2024-05-01T10:00:00.000+03` into the local part and the offset, if any.
fn split_offset(text: &str) -> (&str, Option<&str>) {
    if let Some(local) = text.strip_suffix(['Z', 'z']) {
        return (local, Some("Z"));
    }
    // The offset sign can only follow the time, so search after the `T`.
    let Some(time_start) = text.find(['T', 't']) else {
        return (text, None);
    };
    match text[time_start..].rfind(['+', '-']) {
        Some(at) => (&text[..time_start + at], Some(&text[time_start + at..])),
        None => (text, None),
    }
}

/// Returns whether `offset` is written `+hh:mm` or `-hh:mm`, the form RFC 3339 requires.
fn is_rfc3339_offset(offset: &str) -> bool {
    let bytes = offset.as_bytes();
    bytes.len() == 6
        && matches!(bytes[0], b'+' | b'-')
        && bytes[1..3].iter().all(u8::is_ascii_digit)
        && bytes[3] == b':'
        && bytes[4..6].iter().all(u8::is_ascii_digit)
}

/// Rewrites `+03`, `+0300` and `+03:00` as `+03:00`.
fn normalize_offset(offset: &str) -> Option<String> {
    let (sign, digits) = offset.split_at(1);
    let digits: String = digits.chars().filter(|c| *c != ':').collect();
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    match digits.len() {
        2 => Some(format!("{sign}{digits}:00")),
        4 => Some(format!("{sign}{}:{}", &digits[..2], &digits[2..])),
        _ => None,
    }
}

/// Encodes an element name so that MongoDB stores it safely as a field name: `%` becomes
/// `%25`, `.` becomes `%2E` and a leading `$` becomes `%24`. [`decode_field_name`] reverses it.
pub fn encode_field_name(name: &str) -> String {
    if !name.contains(['%', '.']) && !name.starts_with('$') {
        return name.to_owned();
    }
    let mut encoded = String::with_capacity(name.len() + 6);
    for (index, c) in name.char_indices() {
        match c {
            '%' => encoded.push_str("%25"),
            '.' => encoded.push_str("%2E"),
            '$' if index == 0 => encoded.push_str("%24"),
            _ => encoded.push(c),
        }
    }
    encoded
}

/// Reverses [`encode_field_name`].
pub fn decode_field_name(encoded: &str) -> String {
    encoded
        .replace("%2E", ".")
        .replace("%24", "$")
        .replace("%25", "%")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geopoint_with_four_components() {
        let vertex = parse_geopoint("-1.2836 36.8172 1650.5 4.9").unwrap();
        assert_eq!(vertex.latitude, -1.2836);
        assert_eq!(vertex.longitude, 36.8172);
        assert_eq!(vertex.altitude, Some(1650.5));
        assert_eq!(vertex.accuracy, Some(4.9));
        assert_eq!(vertex.position(), [36.8172, -1.2836]);
    }

    #[test]
    fn geopoint_rejects_garbage() {
        assert!(parse_geopoint("north").is_err());
        assert!(parse_geopoint("1").is_err());
        assert!(parse_geopoint("1 2 3 4 5").is_err());
        assert!(parse_geopoint("NaN 2").is_err());
    }

    #[test]
    fn geoshape_trailing_separator_adds_no_vertex() {
        let text = "0 0 0 0; 0 1 0 0; 1 1 0 0; 0 0 0 0;";
        let vertices = parse_geopoints(text).unwrap();
        assert_eq!(vertices.len(), 4);

        let shape = to_geojson("geoshape", text).unwrap();
        assert_eq!(shape["type"], "Polygon");
        assert_eq!(shape["coordinates"][0].as_array().unwrap().len(), 4);
    }

    #[test]
    fn geoshape_open_ring_is_closed() {
        let shape = to_geojson("geoshape", "0 0;0 1;1 1").unwrap();
        let ring = shape["coordinates"][0].as_array().unwrap();
        assert_eq!(ring.len(), 4);
        assert_eq!(ring.first(), ring.last());
    }

    #[test]
    fn geotrace_needs_two_points() {
        assert!(to_geojson("geotrace", "1 2;").is_err());
        assert_eq!(
            to_geojson("geotrace", "1 2;3 4").unwrap()["type"],
            "LineString"
        );
    }

    #[test]
    fn datetime_offsets() {
        let cases = [
            ("2019-10-14T12:34:56.000Z", "2019-10-14T12:34:56+00:00"),
            ("2019-10-14T12:34:56.000+03", "2019-10-14T12:34:56+03:00"),
            ("2019-10-14T12:34:56.000+03:00", "2019-10-14T12:34:56+03:00"),
            ("2019-10-14T12:34:56-0530", "2019-10-14T12:34:56-05:30"),
            ("2019-10-14T12:34:56", "2019-10-14T12:34:56+00:00"),
        ];
        for (text, expected) in cases {
            let parsed = parse_datetime(text).unwrap();
            assert_eq!(
                parsed.to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
                expected,
                "{text}"
            );
        }
    }

    #[test]
    fn datetime_rejects_garbage() {
        assert!(parse_datetime("yesterday").is_err());
        assert!(parse_datetime("2019-10-14T12:34:56+3").is_err());
    }

    #[test]
    fn field_names_round_trip() {
        for name in ["Q1.1", "$where", "a%2Eb", "plain", "a.$b.", "ünïcode.名前"] {
            let encoded = encode_field_name(name);
            assert!(!encoded.contains('.'), "{encoded}");
            assert!(!encoded.starts_with('$'), "{encoded}");
            assert_eq!(decode_field_name(&encoded), name);
        }
    }
}
