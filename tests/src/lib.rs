//! End-to-end tests of FieldForce; they live under `tests/tests/` and need the local stack (`make up`).
