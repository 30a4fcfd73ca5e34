//! Real boundaries from a GeoJSON FeatureCollection, used as project geofences.

use std::path::Path;

use anyhow::Context;
use bytes::Bytes;
use geo::InteriorPoint;

use crate::client::GatewayClient;

/// A real boundary: its id, GeoJSON geometry, and a point inside it.
pub struct Fence {
    /// Id given to it in project settings.
    pub id: String,
    /// Name from the feature's properties.
    pub name: String,
    /// The GeoJSON geometry.
    pub geometry: serde_json::Value,
    /// A `[lon, lat]` point inside it.
    pub interior: [f64; 2],
}

/// Reads every polygon of a GeoJSON FeatureCollection that has an interior point.
pub fn read_geofences(path: &Path) -> anyhow::Result<Vec<Fence>> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read geofences {}; run `make up` to fetch the boundary set",
            path.display()
        )
    })?;
    let collection: serde_json::Value = serde_json::from_str(&text)?;
    let features = collection["features"]
        .as_array()
        .context("geofences: not a FeatureCollection")?;
    let mut fences = Vec::new();
    for (index, feature) in features.iter().enumerate() {
        let geometry = feature["geometry"].clone();
        let Ok(parsed) = geojson::Geometry::from_json_value(geometry.clone()) else {
            continue;
        };
        let Ok(shape) = geo_types::Geometry::<f64>::try_from(parsed) else {
            continue;
        };
        let Some(point) = shape.interior_point() else {
            continue;
        };
        let properties = &feature["properties"];
        let name = ["name", "NAME", "ADMIN", "admin", "name_en", "A3"]
            .iter()
            .find_map(|key| properties[*key].as_str())
            .unwrap_or("boundary")
            .to_owned();
        fences.push(Fence {
            id: format!("fence-{index}"),
            name,
            geometry,
            interior: [point.x(), point.y()],
        });
    }
    anyhow::ensure!(
        fences.len() >= 2,
        "geofences: need at least two polygons, found {}",
        fences.len()
    );
    Ok(fences)
}

/// Sets the project's geofences to the named boundary, leaving quality thresholds at their
/// defaults.
pub async fn assign(client: &GatewayClient, project: &str, fence: &Fence) -> anyhow::Result<()> {
    let settings = serde_json::json!({
        "geofences": [{ "id": fence.id, "name": fence.name, "geometry": fence.geometry }],
    });
    let route = format!("/v1/projects/{project}/settings");
    let answer = client
        .put_json(&route, Bytes::from(settings.to_string()))
        .await;
    anyhow::ensure!(
        answer.accepted(),
        "setting the geofence of {project} failed: {} {}",
        answer.status,
        answer.message()
    );
    Ok(())
}
