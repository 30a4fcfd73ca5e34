//! A project's geofences in an R-tree of their bounding boxes, with exact point-in-polygon
//! and the distance in metres from a point outside every fence to the nearest fence boundary.

use geo::{BoundingRect, Closest, Distance, Haversine, HaversineClosestPoint};
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
    /// Band index of each fence, in the order of `fences`.
    bands: Vec<EdgeBands>,
    tree: RTree<Envelope>,
}

/// The edges of a fence's rings sorted into horizontal bands, so a point-in-polygon test reads
/// only the edges of the point's band instead of every vertex. Country borders have thousands
/// of vertices, which makes the plain ray-casting test too slow for a lookup budget of a few
/// microseconds.
#[derive(Debug)]
struct EdgeBands {
    min_y: f64,
    max_y: f64,
    band_height: f64,
    /// Edges as `[x1, y1, x2, y2]`, listed in every band their y-range touches.
    bands: Vec<Vec<[f64; 4]>>,
}

/// Edges per band the index aims for; fewer edges per band cost more memory, since an edge
/// that spans several bands is listed in each.
const EDGES_PER_BAND: usize = 2;
/// Cap on the bands of one fence, which bounds its memory.
const MAX_BANDS: usize = 8192;

impl EdgeBands {
    fn new(area: &MultiPolygon<f64>) -> Self {
        let edges: Vec<[f64; 4]> = area
            .0
            .iter()
            .flat_map(|polygon| std::iter::once(polygon.exterior()).chain(polygon.interiors()))
            .flat_map(|ring| ring.lines())
            .map(|line| [line.start.x, line.start.y, line.end.x, line.end.y])
            .collect();
        let (min_y, max_y) =
            edges
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(low, high), edge| {
                    (
                        low.min(edge[1]).min(edge[3]),
                        high.max(edge[1]).max(edge[3]),
                    )
                });
        let count = (edges.len() / EDGES_PER_BAND).clamp(1, MAX_BANDS);
        let band_height = if max_y > min_y {
            (max_y - min_y) / count as f64
        } else {
            1.0
        };
        let mut bands = vec![Vec::new(); count];
        let band_of = |y: f64| (((y - min_y) / band_height) as usize).min(count - 1);
        for edge in edges {
            let (low, high) = (band_of(edge[1].min(edge[3])), band_of(edge[1].max(edge[3])));
            for band in &mut bands[low..=high] {
                band.push(edge);
            }
        }
        Self {
            min_y,
            max_y,
            band_height,
            bands,
        }
    }

    /// Tests a point by even-odd ray casting over the edges of its band, which also handles
    /// holes and the parts of a multipolygon.
    // NOTE: a point exactly on an edge may test either way, whereas geo's `Contains` always
    // excludes the boundary.
    fn contains(&self, x: f64, y: f64) -> bool {
        if !(self.min_y..=self.max_y).contains(&y) || self.bands.is_empty() {
            return false;
        }
        let band = (((y - self.min_y) / self.band_height) as usize).min(self.bands.len() - 1);
        let mut inside = false;
        for &[x1, y1, x2, y2] in &self.bands[band] {
            if (y1 > y) != (y2 > y) && x < x1 + (y - y1) * (x2 - x1) / (y2 - y1) {
                inside = !inside;
            }
        }
        inside
    }
}

/// A geofence geometry that is not a GeoJSON Polygon or MultiPolygon.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("geofence {id:?} is skipped: {reason}")]
pub struct InvalidFence {
    /// Geofence id.
    pub id: String,
    /// Reason the geometry was rejected.
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
        let bands = fences
            .iter()
            .map(|fence| EdgeBands::new(&fence.area))
            .collect();
        Self {
            fences,
            bands,
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

    /// Returns whether the index has no fence.
    pub fn is_empty(&self) -> bool {
        self.fences.is_empty()
    }

    /// Returns the fence that contains the point, the one with the smallest id when fences
    /// overlap.
    pub fn containing(&self, point: Point<f64>) -> Option<&Fence> {
        self.tree
            .locate_all_at_point(&[point.x(), point.y()])
            .filter(|entry| self.bands[entry.data].contains(point.x(), point.y()))
            .map(|entry| &self.fences[entry.data])
            .min_by_key(|fence| fence.id.as_str())
    }

    /// Tests a `[lon, lat]` point: the containing fence, or the nearest one and the
    /// great-circle distance to its boundary. `None` when the index is empty.
    // NOTE: the distance step walks every vertex of each candidate fence, so a point outside
    // fences of thousands of vertices costs about a millisecond (see BENCHMARKS.md).
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
    fn band_test_matches_geo_contains() {
        use geo::Contains;

        // A concave comb with a hole, so rays cross many edges in one band.
        let area = parse_area(&json!({
            "type": "Polygon",
            "coordinates": [
                [[0.0, 0.0], [10.0, 0.0], [10.0, 10.0], [8.0, 10.0], [8.0, 2.0], [6.0, 2.0], [6.0, 10.0],
                 [4.0, 10.0], [4.0, 2.0], [2.0, 2.0], [2.0, 10.0], [0.0, 10.0], [0.0, 0.0]],
                [[0.5, 0.5], [1.5, 0.5], [1.5, 1.5], [0.5, 1.5], [0.5, 0.5]]
            ]
        }))
        .expect("valid polygon");
        let bands = EdgeBands::new(&area);
        for step_x in 0..97 {
            for step_y in 0..97 {
                // Offsets keep every probe off the edges, where the two tests may differ.
                let (x, y) = (-0.37 + step_x as f64 * 0.111, -0.41 + step_y as f64 * 0.113);
                assert_eq!(
                    bands.contains(x, y),
                    area.contains(&Point::new(x, y)),
                    "({x}, {y})"
                );
            }
        }
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
