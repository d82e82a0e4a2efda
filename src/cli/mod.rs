//! Command-line arguments, one module per subcommand.

mod common;
mod convert;
mod download;
mod embed;
mod eval;
mod export;
mod index;
mod probe;
mod search;
mod serve;
mod train;

use clap::{Parser, Subcommand};

/// Train CLIP-style dual encoders and search with them.
#[derive(Debug, Parser)]
#[command(name = "clip", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train a dual encoder on image–caption data (default: the bundled emoji sample).
    Train(Box<train::TrainArgs>),
    /// Retrieval metrics (both directions) and optional zero-shot classification.
    Eval(eval::EvalArgs),
    /// Embed images and/or captions into OUT (.safetensors; .npy or .parquet for one kind).
    Embed(embed::EmbedArgs),
    /// Convert a model (HF or open_clip layout) to the Hugging Face layout.
    Convert(convert::ConvertArgs),
    /// Download a model from the Hugging Face Hub into the standard cache.
    Download(download::DownloadArgs),
    /// Build or inspect an embedding index for `clip search`.
    Index(index::IndexArgs),
    /// Search an index with texts, images or precomputed vectors.
    Search(search::SearchArgs),
    /// Write an index as clip-retrieval's .npy + .parquet files, or as Parquet alone.
    Export(export::ExportArgs),
    /// Answer searches over HTTP (JSON API, clip-retrieval's /knn-service) and from a web page.
    Serve(serve::ServeArgs),
    /// Linear probe with few labels per class on frozen image embeddings (or raw pixels).
    Probe(probe::ProbeArgs),
}

impl Cli {
    /// Whether freed memory should stay in the process for reuse
    /// (`clip::reuse_freed_memory`): for every command but `serve`, a long-running
    /// process whose large allocations (uploads being decoded, on whichever pool thread) are
    /// rare and must go back to the system, or each thread's arena keeps its own peak.
    pub fn reuses_freed_memory(&self) -> bool {
        !matches!(self.command, Command::Serve(_))
    }
}

/// Runs the chosen subcommand.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let done = match cli.command {
        Command::Train(a) => train::run(*a),
        Command::Eval(a) => eval::run(a),
        Command::Embed(a) => embed::run(a),
        Command::Convert(a) => convert::run(a),
        Command::Download(a) => download::run(a),
        Command::Index(a) => index::run(a),
        Command::Search(a) => search::run(a),
        Command::Export(a) => export::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Probe(a) => probe::run(a),
    };
    done.map_err(common::in_flags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
