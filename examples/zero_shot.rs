//! Zero-shot classification: which of some labels best describes each image.
//!
//! ```text
//! cargo run --release --example zero_shot -- MODEL "cat,dog,car" IMAGE...
//! ```
//!
//! Each label becomes the prompt "a photo of a {label}."; an image's class probabilities are
//! the softmax of its cosine similarity to each prompt times the model's learned temperature.

use clip::{dot, Clip};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, labels, images @ ..] = args.as_slice() else {
        return Err("usage: zero_shot MODEL LABEL,LABEL,... IMAGE...".into());
    };
    if images.is_empty() {
        return Err("give at least one image".into());
    }
    let clip = Clip::from_dir(model)?;
    let labels: Vec<&str> = labels.split(',').map(str::trim).collect();
    let prompts: Vec<String> = labels
        .iter()
        .map(|l| format!("a photo of a {l}."))
        .collect();
    let classes = clip.embed_texts(&prompts)?;
    let pictures = clip.embed_images(images)?;
    let scale = clip.model().logit_scale().exp()?.to_scalar::<f32>()?;
    for (path, image) in images.iter().zip(pictures.rows()) {
        let logits: Vec<f32> = classes.rows().map(|c| scale * dot(image, c)).collect();
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let total: f32 = logits.iter().map(|l| (l - max).exp()).sum();
        let (best, logit) = logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .expect("at least one label");
        println!(
            "{path}: {} ({:.1}%)",
            labels[best],
            100.0 * (logit - max).exp() / total
        );
    }
    Ok(())
}
