//! Search a folder of images by text.
//!
//! ```text
//! cargo run --release --example search_folder -- MODEL FOLDER "a red car" [K]
//! ```
//!
//! MODEL is a model folder (e.g. `runs/emoji/final` after the README's first command) or a
//! Hugging Face id (`openai/clip-vit-base-patch32`, downloaded on first use). The index is
//! kept in `FOLDER.clip-index` next to the folder; a second run embeds only new or changed
//! images.

use std::path::PathBuf;

use clip::{index, Clip, Index};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, folder, query, rest @ ..] = args.as_slice() else {
        return Err("usage: search_folder MODEL FOLDER QUERY [K]".into());
    };
    let k: usize = rest.first().map_or(Ok(5), |s| s.parse())?;
    let clip = if PathBuf::from(model).is_dir() {
        Clip::from_dir(model)?
    } else {
        Clip::from_hub(model)?
    };
    let dir = PathBuf::from(format!("{}.clip-index", folder.trim_end_matches('/')));
    let report = index::build_images(
        folder.as_ref(),
        &dir,
        &clip.dir().display().to_string(),
        || Ok(&clip),
        &index::BuildOptions::default(),
        &(),
    )?;
    eprintln!(
        "{} images indexed ({} embedded now, {} skipped)",
        report.count,
        report.embedded,
        report.skipped.len()
    );
    let index = Index::open(&dir)?;
    for hit in &clip.search_texts(&index, &[query], k)?[0] {
        println!("{:.3}  {}", hit.score, index.entries().label(hit.id));
    }
    Ok(())
}
