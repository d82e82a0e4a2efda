//! One model per process, shared by every request: a worker thread owns the [`Clip`] and
//! embeds queries in batches, fed by a bounded queue.

use tokio::sync::{mpsc, oneshot};

use super::ApiError;
use crate::{Clip, Embeddings, Features, DEFAULT_BATCH};

/// Queries waiting for the model at most; one more is turned away (503) rather than queued,
/// so memory stays bounded however many clients call at once.
const QUEUE: usize = 64;

/// What the model embeds: a caption, or an image already preprocessed off the worker.
pub(crate) enum Query {
    Text(String),
    Pixels(Vec<f32>),
}

/// Where a query's embedding (or the model's error) goes.
type Reply = oneshot::Sender<Result<Vec<f32>, String>>;

struct Job {
    query: Query,
    reply: Reply,
}

/// The handle requests use; the worker stops when the last handle is dropped.
pub(crate) struct Encoder {
    tx: mpsc::Sender<Job>,
    preprocess: vision_encoder::Preprocess,
    dim: usize,
}

impl Encoder {
    /// Moves `clip` onto its own thread. Simultaneous queries are drained from the queue into
    /// one forward pass per kind (up to [`DEFAULT_BATCH`]), so N concurrent requests never run
    /// N model copies and inference never blocks the async runtime.
    pub(crate) fn start(clip: Clip) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (preprocess, dim) = (clip.preprocess().clone(), clip.dim());
        std::thread::Builder::new()
            .name("clip-encoder".into())
            .spawn(move || work(&clip, rx))?;
        Ok(Self {
            tx,
            preprocess,
            dim,
        })
    }

    /// How uploaded images are resized and normalised for this model.
    pub(crate) fn preprocess(&self) -> &vision_encoder::Preprocess {
        &self.preprocess
    }

    /// The embedding dimension.
    pub(crate) fn dim(&self) -> usize {
        self.dim
    }

    /// The unit embedding of `query`, once the worker gets to it.
    pub(crate) async fn embed(&self, query: Query) -> Result<Vec<f32>, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .try_send(Job { query, reply })
            .map_err(|_| ApiError::busy(format!("{QUEUE} queries are already waiting")))?;
        answer
            .await
            .map_err(|_| ApiError::internal("the model worker stopped".into()))?
            .map_err(ApiError::internal)
    }
}

fn work(clip: &Clip, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < DEFAULT_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let (mut texts, mut images) = (Vec::new(), Vec::new());
        for job in jobs {
            match job.query {
                Query::Text(t) => texts.push((t, job.reply)),
                Query::Pixels(p) => images.push((p, job.reply)),
            }
        }
        answer(texts, |t| clip.embed_texts(&t));
        answer(images, |px| {
            let t = clip.encode_pixels(px, Features::Embeds)?;
            Embeddings::from_tensor(&t)?.normalized()
        });
    }
}

/// Embeds a batch in one call and sends each job its row (or the batch's error).
fn answer<T>(jobs: Vec<(T, Reply)>, embed: impl FnOnce(Vec<T>) -> crate::Result<Embeddings>) {
    if jobs.is_empty() {
        return;
    }
    let (inputs, replies): (Vec<T>, Vec<_>) = jobs.into_iter().unzip();
    match embed(inputs) {
        Ok(e) => {
            for (reply, row) in replies.into_iter().zip(e.rows()) {
                let _ = reply.send(Ok(row.to_vec()));
            }
        }
        Err(err) => {
            for reply in replies {
                let _ = reply.send(Err(err.to_string()));
            }
        }
    }
}
