//! `encode`: turns a raw submission written as JSON into the bytes a partner system would
//! produce to the raw topic, in any of the encodings FieldForce reads, for `kcat` or any
//! other Kafka client to send.

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use fieldforce_schemas::avro;
use fieldforce_schemas::codec;
use fieldforce_schemas::submission::RawSubmission;

/// Encoding of the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Encoding {
    /// Avro single-object encoding: C3 01, the schema's Rabin fingerprint, the datum.
    SingleObject,
    /// Confluent framing: a zero byte, the 4-byte schema id pinned in the catalog, the datum.
    Confluent,
    /// JSON; send it with the header `content-type: application/json`.
    Json,
}

/// Arguments of `encode`.
#[derive(Args)]
pub struct EncodeArgs {
    /// Encoding to write.
    #[arg(long, value_enum)]
    encoding: Encoding,
    /// JSON file of the raw submission (the raw-submission contract); standard input when
    /// absent.
    input: Option<PathBuf>,
    /// File to write; standard output when absent.
    #[arg(long, short)]
    output: Option<PathBuf>,
}

/// Encodes one raw submission.
pub fn run(args: EncodeArgs) -> anyhow::Result<bool> {
    let mut text = Vec::new();
    match &args.input {
        Some(path) => {
            text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
        }
        None => {
            std::io::stdin().read_to_end(&mut text)?;
        }
    }
    let raw: RawSubmission =
        serde_json::from_slice(&text).context("the input is not a raw submission in JSON")?;
    let bytes = match args.encoding {
        Encoding::SingleObject => avro::encode_single_object(&raw),
        Encoding::Confluent => avro::encode_confluent(&raw),
        Encoding::Json => codec::encode(&raw),
    };
    match &args.output {
        Some(path) => std::fs::write(path, &bytes)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => std::io::stdout().write_all(&bytes)?,
    }
    Ok(true)
}
