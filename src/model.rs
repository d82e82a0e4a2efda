//! [`Clip`]: a loaded model with its preprocessing and tokenizer, embedding images and texts.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use clip_model::{Checkpoint, ClipModel, ClipTokenizer, Preprocess};
use clip_nn::quant::Precision;

use crate::{assets, hub, Embeddings, Error, Result};

/// Which features a tower gives: its embeddings in the shared space, or its pooled output
/// before the projection (transformers' `pooler_output`: where a probe of an image-only
/// model reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Features {
    /// The tower's output before the projection head (transformers' `pooler_output`): where
    /// SSL benchmarks read an image-only model.
    Pooled,
    /// The projected embeddings in the shared image–text space.
    Embeds,
}

impl Features {
    /// `choice`, else pooled for a model trained on images alone and embeddings otherwise.
    pub fn resolve(choice: Option<Self>, model: &ClipModel) -> Self {
        choice.unwrap_or(if model.config().image_only {
            Self::Pooled
        } else {
            Self::Embeds
        })
    }

    /// For messages: what the features are and why they were chosen.
    pub fn describe(self, choice: Option<Self>) -> &'static str {
        match (self, choice) {
            (Self::Pooled, None) => {
                "pooled features before the projection head (the default for an image-only \
                 model; --features embeds for the embeddings)"
            }
            (Self::Pooled, Some(_)) => "pooled features before the projection head",
            (Self::Embeds, _) => "embeddings",
        }
    }

    /// The name written into files (`pooled` or `embeds`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Pooled => "pooled",
            Self::Embeds => "embeds",
        }
    }
}

/// Told how far a long job has got, e.g. to draw a progress bar. `()` ignores it all.
pub trait Progress {
    /// A job over `total` items named `what` begins.
    fn start(&self, _total: usize, _what: &str) {}
    /// `n` more items are done.
    fn advance(&self, _n: usize) {}
    /// The job is over.
    fn finish(&self) {}
}

impl Progress for () {}

/// Items per forward pass unless told otherwise.
pub const DEFAULT_BATCH: usize = 32;

/// A CLIP model ready for inference: both towers, the image preprocessing and the tokenizer
/// its checkpoint asks for (the bundled CLIP tokenizer when the folder has none).
///
/// ```
/// # fn main() -> clip::Result<()> {
/// let clip = clip::Clip::from_dir("tests/fixtures/hf_tiny")?;
/// let images = clip.embed_images(&["tests/fixtures/images/img00.png"])?;
/// let texts = clip.embed_texts(&["a red circle", "a blue square"])?;
/// assert_eq!((images.len(), texts.len()), (1, 2));
/// // Unit rows: cosine similarity is the dot product.
/// let sims: Vec<f32> = texts.rows().map(|t| clip::dot(t, images.row(0))).collect();
/// assert!(sims.iter().all(|s| s.abs() <= 1.0 + 1e-5));
/// # Ok(()) }
/// ```
pub struct Clip {
    model: ClipModel,
    preprocess: Preprocess,
    tokenizer: ClipTokenizer,
    dir: PathBuf,
    precision: Precision,
}

impl Clip {
    /// Loads the model in `dir` (Hugging Face or open_clip layout) on the CPU.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Self::load_dir(dir.as_ref(), &Device::Cpu)
    }

    /// Loads `repo_id` (e.g. `openai/clip-vit-base-patch32`) from the Hugging Face cache,
    /// downloading it first when it is not there, on the CPU.
    pub fn from_hub(repo_id: &str) -> Result<Self> {
        let dir = match hub::cached(repo_id, "main") {
            Some(dir) => dir,
            None => hub::download(repo_id, "main", false)?,
        };
        Self::load_dir(&dir, &Device::Cpu)
    }

    /// What `--model` means on the command line: a model folder, or a Hub id already in the
    /// cache (nothing is downloaded), loaded on `device`.
    pub fn open(spec: &str, device: &Device) -> Result<Self> {
        Self::load_dir(&resolve_model_dir(spec)?, device)
    }

    fn load_dir(dir: &Path, device: &Device) -> Result<Self> {
        let ckpt = load_checkpoint(dir, device)?;
        let tokenizer = match &ckpt.tokenizer {
            Some(_) => ckpt.tokenizer(None)?,
            None => assets::bundled_tokenizer(ckpt.config.text_config.max_position_embeddings)?,
        };
        let preprocess = ckpt.preprocess.clone();
        let precision = ckpt.precision();
        Ok(Self {
            model: ckpt.into_model()?,
            preprocess,
            tokenizer,
            dir: dir.to_path_buf(),
            precision,
        })
    }

    /// Runs both towers' transformer blocks in `precision` from now on: int8 or bf16 weights
    /// packed once, here, for the CPU kernels (see [`Precision`]); f32 changes nothing.
    /// Embeddings stay f32 and unit length, so an index built in one precision can be
    /// searched with queries from another.
    ///
    /// ```
    /// # fn main() -> clip::Result<()> {
    /// use clip::{Clip, Precision};
    /// let f32 = Clip::from_dir("tests/fixtures/hf_tiny")?;
    /// let int8 = Clip::from_dir("tests/fixtures/hf_tiny")?.with_precision(Precision::Int8)?;
    /// let (a, b) = (f32.embed_texts(&["a red circle"])?, int8.embed_texts(&["a red circle"])?);
    /// assert!(clip::dot(a.row(0), b.row(0)) > 0.99);
    /// # Ok(()) }
    /// ```
    ///
    /// A quantized checkpoint (`clip convert --precision int8`) loads already in int8; it
    /// holds no f32 weights to run another precision from, so asking for one is an error.
    pub fn with_precision(mut self, precision: Precision) -> Result<Self> {
        if self.precision == Precision::Int8 && precision != Precision::Int8 {
            return Err(clip_model::ModelError::Precision {
                precision,
                reason: "this checkpoint stores int8 weights; load the f32 checkpoint it \
                         was converted from to run another precision",
            }
            .into());
        }
        self.model.pack(precision)?;
        self.precision = precision;
        Ok(self)
    }

    /// The precision the towers run in (int8 from the start for a quantized checkpoint).
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The two towers and the temperature.
    pub fn model(&self) -> &ClipModel {
        &self.model
    }

    /// How images are resized, cropped and normalised for this model.
    pub fn preprocess(&self) -> &Preprocess {
        &self.preprocess
    }

    /// The tokenizer captions go through.
    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizer
    }

    /// The folder the model was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The embedding dimension.
    pub fn dim(&self) -> usize {
        self.model.config().projection_dim
    }

    /// Unit-length embeddings of image files (PNG, JPEG, WebP), in order. A file that cannot
    /// be read or decoded is an error naming it.
    pub fn embed_images<P: AsRef<Path>>(&self, paths: &[P]) -> Result<Embeddings> {
        let paths: Vec<PathBuf> = paths.iter().map(|p| p.as_ref().to_path_buf()).collect();
        let t = self.image_features(&paths, DEFAULT_BATCH, Features::Embeds, &())?;
        Embeddings::from_tensor(&t)?.normalized()
    }

    /// Unit-length embeddings of images already in memory.
    pub fn embed_decoded(&self, images: &[image::RgbImage]) -> Result<Embeddings> {
        let t = self.batched(
            images,
            DEFAULT_BATCH,
            Features::Embeds,
            true,
            &(),
            |chunk| {
                let px = chunk
                    .iter()
                    .map(|img| vision_encoder::preprocess(img, &self.preprocess))
                    .collect();
                self.encode_pixels(px, Features::Embeds)
            },
        )?;
        Embeddings::from_tensor(&t)?.normalized()
    }

    /// Unit-length embeddings of captions, in order.
    pub fn embed_texts<S: AsRef<str>>(&self, texts: &[S]) -> Result<Embeddings> {
        let texts: Vec<&str> = texts.iter().map(AsRef::as_ref).collect();
        let t = self.text_features(&texts, DEFAULT_BATCH, Features::Embeds, &())?;
        Embeddings::from_tensor(&t)?.normalized()
    }

    /// Image features `[n, dim]` of files, `batch` at a time, as the model returns them
    /// (not normalised: transformers' `get_image_features`, or the pooled output).
    pub fn image_features(
        &self,
        files: &[PathBuf],
        batch: usize,
        which: Features,
        progress: &dyn Progress,
    ) -> Result<Tensor> {
        self.batched(files, batch, which, true, progress, |chunk| {
            let pixels =
                vision_encoder::preprocess_files(chunk, &self.preprocess, self.model.device())?;
            self.features_of_pixels(&pixels, which)
        })
    }

    /// Caption features `[n, dim]`, `batch` at a time (see [`Clip::image_features`]).
    pub fn text_features(
        &self,
        texts: &[&str],
        batch: usize,
        which: Features,
        progress: &dyn Progress,
    ) -> Result<Tensor> {
        self.batched(texts, batch, which, false, progress, |chunk| {
            let ids = self.tokenizer.encode_batch(chunk)?;
            Ok(match which {
                Features::Embeds => self.model.encode_text(&ids)?,
                Features::Pooled => self.model.pooled_text(&ids)?,
            })
        })
    }

    /// `encode` over images or captions, `batch` at a time, telling `progress`: their `which`
    /// features `[n, dim]` in one tensor.
    fn batched<T>(
        &self,
        items: &[T],
        batch: usize,
        which: Features,
        image: bool,
        progress: &dyn Progress,
        encode: impl Fn(&[T]) -> Result<Tensor>,
    ) -> Result<Tensor> {
        progress.start(items.len(), if image { "images" } else { "captions" });
        let mut parts = Vec::new();
        for chunk in items.chunks(batch.max(1)) {
            parts.push(encode(chunk)?);
            progress.advance(chunk.len());
        }
        progress.finish();
        if parts.is_empty() {
            let dim = self.feature_dim(which, image);
            return Ok(Tensor::zeros((0, dim), DType::F32, self.model.device())?);
        }
        Ok(Tensor::cat(&parts, 0)?)
    }

    /// Features of preprocessed images (each `3·s·s` values, see [`Clip::preprocess`]).
    pub fn encode_pixels(&self, pixels: Vec<Vec<f32>>, which: Features) -> Result<Tensor> {
        let t = vision_encoder::pixels_to_tensor(
            pixels,
            self.preprocess.image_size,
            self.model.device(),
        )?;
        self.features_of_pixels(&t, which)
    }

    fn features_of_pixels(&self, pixels: &Tensor, which: Features) -> Result<Tensor> {
        Ok(match which {
            Features::Embeds => self.model.encode_image(pixels)?,
            Features::Pooled => self.model.pooled_image(pixels)?,
        })
    }

    fn feature_dim(&self, which: Features, image: bool) -> usize {
        let cfg = self.model.config();
        match (which, image) {
            (Features::Embeds, _) => cfg.projection_dim,
            (Features::Pooled, true) => cfg.vision_config.hidden_size,
            (Features::Pooled, false) => cfg.text_config.hidden_size,
        }
    }
}

/// `spec` as a model folder, or as a Hub repo id already in the local cache.
pub fn resolve_model_dir(spec: &str) -> Result<PathBuf> {
    let p = PathBuf::from(spec);
    if p.is_dir() {
        return Ok(p);
    }
    hub::cached(spec, "main").ok_or_else(|| Error::ModelNotFound(spec.to_string()))
}

/// The checkpoint in `dir`, or an error naming the folder.
pub(crate) fn load_checkpoint(dir: &Path, device: &Device) -> Result<Checkpoint> {
    Checkpoint::load(dir, device).map_err(|e| Error::Load {
        dir: dir.to_path_buf(),
        source: Box::new(e),
    })
}
