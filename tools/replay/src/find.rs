//! `find`: prints stored submissions as JSON, for a look at what the pipeline wrote without a
//! MongoDB shell.

use clap::Args;
use fieldforce_runtime::config::Config;
use futures::TryStreamExt;
use mongodb::bson::{Bson, Document};

/// Arguments of `find`.
#[derive(Args)]
pub struct FindArgs {
    /// MongoDB query filter as JSON, such as '{"quality.flags.check": "too_fast"}'.
    #[arg(long, default_value = "{}")]
    filter: String,
    /// Largest number of documents printed.
    #[arg(long, default_value_t = 5)]
    limit: i64,
    /// Collection to read, in the configured database.
    #[arg(long, default_value = "submissions")]
    collection: String,
}

/// Prints matching documents, one JSON object each, and their total count.
pub async fn run(args: FindArgs) -> anyhow::Result<bool> {
    let config = Config::load_from_env()?;
    let filter: serde_json::Value = serde_json::from_str(&args.filter)
        .map_err(|error| anyhow::anyhow!("--filter is not valid JSON: {error}"))?;
    let Bson::Document(filter) = Bson::try_from(filter)? else {
        anyhow::bail!("--filter must be a JSON object");
    };
    let collection = mongodb::Client::with_uri_str(&config.mongodb.uri)
        .await?
        .database(&config.mongodb.database)
        .collection::<Document>(&args.collection);

    let total = collection.count_documents(filter.clone()).await?;
    let mut cursor = collection.find(filter).limit(args.limit).await?;
    while let Some(document) = cursor.try_next().await? {
        let json = Bson::Document(document).into_relaxed_extjson();
        println!("{}", serde_json::to_string_pretty(&json)?);
    }
    eprintln!("{total} documents match");
    Ok(true)
}
