//! The MongoDB sink: batched bulk writes, idempotent, offsets moved only after the store acknowledges.

#![deny(missing_docs)]
