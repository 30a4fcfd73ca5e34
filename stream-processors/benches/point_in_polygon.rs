//! Point-in-polygon cost over about 10,000 real boundary polygons.
//!
//! The fences are the 220 country borders installed by `stack/fetch-boundaries`, copied into
//! a 7 by 7 grid of scaled-down worlds until there are about 10,000 fences. So the R-tree and
//! the exact tests see real shapes at a realistic count. It
//! reports per-lookup latency percentiles for `FenceIndex::containing` (R-tree candidates plus
//! exact point-in-polygon) and for `FenceIndex::locate` (which adds the distance to the
//! nearest boundary when the point is outside every fence).
//!
//! Run: `stack/fetch-boundaries && cargo bench -p fieldforce-processors --bench point_in_polygon`

use std::time::Instant;

use fieldforce_processors::geofence::{Fence, FenceIndex, parse_area};
use geo::MapCoords;
use geo_types::Point;

const GRID: usize = 7;
const TARGET_FENCES: usize = 10_000;
const LOOKUPS: usize = 200_000;

fn main() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../.stack/boundaries/countries-land-10km-0.6.0/map.geo.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|error| {
        panic!("boundary data {} is missing ({error}): run `make up` (or stack/fetch-boundaries) first", path.display())
    });
    let collection: serde_json::Value =
        serde_json::from_str(&text).expect("the boundary set is JSON");
    let countries: Vec<(String, geo_types::MultiPolygon<f64>)> = collection["features"]
        .as_array()
        .expect("a FeatureCollection")
        .iter()
        .filter_map(|feature| {
            let code = feature["properties"]["A3"].as_str()?.to_owned();
            parse_area(&feature["geometry"])
                .ok()
                .map(|area| (code, area))
        })
        .collect();

    let (tile_width, tile_height) = (360.0 / GRID as f64, 180.0 / GRID as f64);
    let mut fences = Vec::with_capacity(TARGET_FENCES + countries.len());
    'tiles: for tile in 0..GRID * GRID {
        let (column, row) = ((tile % GRID) as f64, (tile / GRID) as f64);
        let (west, south) = (-180.0 + column * tile_width, -90.0 + row * tile_height);
        for (code, area) in &countries {
            if fences.len() >= TARGET_FENCES + countries.len() / 2 {
                break 'tiles;
            }
            let scaled = area.map_coords(|coord| geo_types::Coord {
                x: west + (coord.x + 180.0) / GRID as f64,
                y: south + (coord.y + 90.0) / GRID as f64,
            });
            fences.push(Fence {
                id: format!("{code}-{tile}"),
                area: scaled,
            });
        }
    }
    let vertices: usize = fences
        .iter()
        .map(|fence| geo::CoordsIter::coords_count(&fence.area))
        .sum();
    let started = Instant::now();
    let index = FenceIndex::new(fences);
    println!(
        "fences: {}  vertices: {vertices}  index build: {:.2?}",
        index.len(),
        started.elapsed()
    );

    // xorshift64*: a fixed seed keeps runs comparable.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    };
    let points: Vec<Point<f64>> = (0..LOOKUPS)
        .map(|_| Point::new(next() * 360.0 - 180.0, next() * 180.0 - 90.0))
        .collect();

    let mut inside = 0usize;
    let contains = measure(&points, |point| {
        if index.containing(point).is_some() {
            inside += 1;
        }
    });
    report("containing (R-tree + exact point-in-polygon)", &contains);
    println!("  points inside a fence: {inside} of {LOOKUPS}");

    let land: Vec<Point<f64>> = points
        .iter()
        .copied()
        .filter(|point| index.containing(*point).is_some())
        .collect();
    report(
        "containing, points inside a fence only",
        &measure(&land, |point| {
            std::hint::black_box(index.containing(point));
        }),
    );

    let sample: Vec<Point<f64>> = points.iter().copied().take(20_000).collect();
    report(
        "locate (adds nearest-boundary distance when outside)",
        &measure(&sample, |point| {
            std::hint::black_box(index.locate(point));
        }),
    );
}

fn measure(points: &[Point<f64>], mut lookup: impl FnMut(Point<f64>)) -> Vec<u128> {
    let mut nanos: Vec<u128> = points
        .iter()
        .map(|point| {
            let started = Instant::now();
            lookup(*point);
            started.elapsed().as_nanos()
        })
        .collect();
    nanos.sort_unstable();
    nanos
}

fn report(name: &str, sorted_nanos: &[u128]) {
    let percentile =
        |p: f64| sorted_nanos[((sorted_nanos.len() - 1) as f64 * p) as usize] as f64 / 1000.0;
    println!(
        "{name}: n={}  p50={:.2} us  p99={:.2} us  max={:.2} us",
        sorted_nanos.len(),
        percentile(0.50),
        percentile(0.99),
        percentile(1.0)
    );
}
