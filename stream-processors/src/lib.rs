//! Stream processors: validation, GPS checks and geofencing, and quality scoring, each its own consumer group.

#![deny(missing_docs)]
