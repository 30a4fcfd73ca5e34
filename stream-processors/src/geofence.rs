//! A project's geofences in an R-tree of their bounding boxes, with exact point-in-polygon
//! and the distance in metres from a point outside every fence to the nearest fence boundary.

use geo::{BoundingRect, Closest, Contains, Distance, Haversine, HaversineClosestPoint};
use geo_types::{MultiPolygon, Point};
use rstar::primitives::{GeomWithData, Rectangle};
use rstar::{AABB, RTree};

use fieldforce_schemas::project::Geofence;
use fieldforce_schemas::submission::GeofenceResult;

/// An R-tree entry: a fence's bounding box and its index in [`FenceIndex::fences`].
type Envelope = GeomWithData<Rectangle<[f64; 2]>, usize>;

/// One fence with its geometry converted for geo's algorithms.
#[derive(Debug, Clone)]
pub struct Fence {
    /// Geofence id, unique in the project.
    pub id: String,
    /// The area, `[lon, lat]` coordinates.
    pub area: MultiPolygon<f64>,
}

/// The geofences of one project, ready for lookups.
#[derive(Debug)]
pub struct FenceIndex {
    fences: Vec<Fence>,
    tree: RTree<Envelope>,
}

/// A geofence geometry that is not a GeoJSON Polygon or MultiPolygon.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("geofence {id:?} is skipped: {reason}")]
pub struct InvalidFence {
    /// Geofence id.
    pub id: String,
    /// What is wrong with its geometry.
    pub reason: String,
}

/// Converts a GeoJSON Polygon or MultiPolygon value to a multipolygon.
pub fn parse_area(geometry: &serde_json::Value) -> Result<MultiPolygon<f64>, String> {
    let geometry =
        geojson::Geometry::from_json_value(geometry.clone()).map_err(|error| error.to_string())?;
    let converted: geo_types::Geometry<f64> = geometry
        .try_into()
        .map_err(|error: geojson::Error| error.to_string())?;
    match converted {
        geo_types::Geometry::Polygon(polygon) => Ok(MultiPolygon(vec![polygon])),
        geo_types::Geometry::MultiPolygon(multi) => Ok(multi),
        _ => Err("not a Polygon or MultiPolygon".to_owned()),
    }
}

impl FenceIndex {
    /// Builds the index from fences whose areas are already converted.
    pub fn new(fences: Vec<Fence>) -> Self {
        let envelopes = fences
            .iter()
            .enumerate()
            .filter_map(|(index, fence)| {
                let rect = fence.area.bounding_rect()?;
                let envelope = Rectangle::from_corners(rect.min().into(), rect.max().into());
                Some(GeomWithData::new(envelope, index))
            })
            .collect();
        Self {
            fences,
            tree: RTree::bulk_load(envelopes),
        }
    }

    /// Builds the index from a project's geofences, returning the ones skipped as invalid.
    pub fn from_geofences(geofences: &[Geofence]) -> (Self, Vec<InvalidFence>) {
        let mut fences = Vec::with_capacity(geofences.len());
        let mut invalid = Vec::new();
        for geofence in geofences {
            match parse_area(&geofence.geometry) {
                Ok(area) => fences.push(Fence {
                    id: geofence.id.clone(),
                    area,
                }),
                Err(reason) => invalid.push(InvalidFence {
                    id: geofence.id.clone(),
                    reason,
                }),
            }
        }
        (Self::new(fences), invalid)
    }

    /// Number of fences in the index.
    pub fn len(&self) -> usize {
        self.fences.len()
    }

    /// Whether the index has no fence.
    pub fn is_empty(&self) -> bool {
        self.fences.is_empty()
    }

    /// Returns the first fence that contains the point, by index order.
    pub fn containing(&self, point: Point<f64>) -> Option<&Fence> {
        self.tree
            .locate_all_at_point(&[point.x(), point.y()])
            .map(|entry| &self.fences[entry.data])
            .filter(|fence| fence.area.contains(&point))
            .min_by_key(|fence| fence.id.as_str())
    }

    /// Tests a `[lon, lat]` point: the containing fence, or the nearest one and the
    /// great-circle distance to its boundary. `None` when the index is empty.
    pub fn locate(&self, point: Point<f64>) -> Option<GeofenceResult> {
        if let Some(fence) = self.containing(point) {
            return Some(GeofenceResult {
                inside: true,
                geofence_id: fence.id.clone(),
                distance_m: 0.0,
            });
        }

        // Visit fences by the planar distance of their boxes, in degrees, and stop once a box
        // is further away than the closest boundary point found so far.
        // NOTE: ordering by degrees is exact for the stopping rule only near the equator; far
        // from it a fence slightly further in longitude may be nearer in metres, so the
        // reported nearest fence can differ from the true one by that margin.
        let query = [point.x(), point.y()];
        let mut best: Option<(f64, f64, &Fence)> = None;
        for (entry, box_distance_2) in self.tree.nearest_neighbor_iter_with_distance_2(&query) {
            if let Some((_, best_degrees, _)) = best
                && box_distance_2 > best_degrees * best_degrees
            {
                break;
            }
            let fence = &self.fences[entry.data];
            let closest = match fence.area.haversine_closest_point(&point) {
                Closest::Intersection(found) | Closest::SinglePoint(found) => found,
                Closest::Indeterminate => continue,
            };
            let metres = Haversine.distance(point, closest);
            let degrees = (closest.x() - point.x()).hypot(closest.y() - point.y());
            if best.is_none_or(|(best_metres, _, _)| metres < best_metres) {
                best = Some((metres, degrees, fence));
            }
        }
        best.map(|(metres, _, fence)| GeofenceResult {
            inside: false,
            geofence_id: fence.id.clone(),
            distance_m: metres,
        })
    }

    /// Returns the bounding box of every fence, for diagnostics.
    pub fn envelope(&self) -> AABB<[f64; 2]> {
        self.tree.root().envelope()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn square(id: &str, west: f64, south: f64, size: f64) -> Geofence {
        let (east, north) = (west + size, south + size);
        Geofence {
            id: id.to_owned(),
            name: String::new(),
            geometry: json!({
                "type": "Polygon",
                "coordinates": [[[west, south], [east, south], [east, north], [west, north], [west, south]]]
            }),
        }
    }

    #[test]
    fn point_inside_square_has_zero_distance() {
        let (index, invalid) = FenceIndex::from_geofences(&[square("a", 36.0, -2.0, 1.0)]);
        assert!(invalid.is_empty());
        let result = index.locate(Point::new(36.5, -1.5)).expect("one fence");
        assert!(result.inside);
        assert_eq!(result.geofence_id, "a");
        assert_eq!(result.distance_m, 0.0);
    }

    #[test]
    fn point_outside_reports_nearest_boundary_in_metres() {
        let fences = [
            square("near", 0.0, 0.0, 1.0),
            square("far", 10.0, 10.0, 1.0),
        ];
        let (index, _) = FenceIndex::from_geofences(&fences);
        // 0.01 degree of latitude south of the square's southern edge is about 1112 m.
        let result = index.locate(Point::new(0.5, -0.01)).expect("fences exist");
        assert!(!result.inside);
        assert_eq!(result.geofence_id, "near");
        assert!(
            (result.distance_m - 1112.0).abs() < 5.0,
            "{}",
            result.distance_m
        );
    }

    #[test]
    fn hole_is_outside() {
        let fence = Geofence {
            id: "ring".into(),
            name: String::new(),
            geometry: json!({
                "type": "Polygon",
                "coordinates": [
                    [[0.0, 0.0], [4.0, 0.0], [4.0, 4.0], [0.0, 4.0], [0.0, 0.0]],
                    [[1.0, 1.0], [3.0, 1.0], [3.0, 3.0], [1.0, 3.0], [1.0, 1.0]]
                ]
            }),
        };
        let (index, _) = FenceIndex::from_geofences(&[fence]);
        let result = index.locate(Point::new(2.0, 2.0)).expect("one fence");
        assert!(!result.inside);
        // The hole's edge is 1 degree of latitude or longitude away: about 111 km.
        assert!(
            (result.distance_m - 111_195.0).abs() < 500.0,
            "{}",
            result.distance_m
        );
    }

    #[test]
    fn invalid_geometry_is_skipped() {
        let fence = Geofence {
            id: "line".into(),
            name: String::new(),
            geometry: json!({"type": "LineString", "coordinates": [[0.0, 0.0], [1.0, 1.0]]}),
        };
        let (index, invalid) = FenceIndex::from_geofences(&[fence]);
        assert!(index.is_empty());
        assert_eq!(invalid.len(), 1);
        assert!(index.locate(Point::new(0.0, 0.0)).is_none());
    }
}
