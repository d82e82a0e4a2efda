//! One model per process, shared by every request: a worker thread owns the [`Clip`] and
//! embeds queries in batches, fed by a bounded queue.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};

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

/// A request's slot among those handled at once (see `api::admit`).
pub(crate) type Slot = Arc<OwnedSemaphorePermit>;

/// Where a query's embedding (or the model's error) goes.
type Reply = oneshot::Sender<Result<Vec<f32>, String>>;

struct Job {
    query: Query,
    reply: Reply,
    /// Held until the query is embedded, even if its client hung up meanwhile.
    slot: Option<Slot>,
}

/// The handle requests use; the worker stops when the last handle is dropped.
pub(crate) struct Encoder {
    tx: mpsc::Sender<Job>,
    preprocess: vision_encoder::Preprocess,
    dim: usize,
    context_length: usize,
}

impl Encoder {
    /// Moves `clip` onto its own thread. Simultaneous queries are drained from the queue into
    /// one forward pass per kind (up to [`DEFAULT_BATCH`]), so N concurrent requests never run
    /// N model copies and inference never blocks the async runtime.
    pub(crate) fn start(clip: Clip) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (preprocess, dim) = (clip.preprocess().clone(), clip.dim());
        let context_length = clip.tokenizer().context_length();
        std::thread::Builder::new()
            .name("clip-encoder".into())
            .spawn(move || work(&clip, rx))?;
        Ok(Self {
            tx,
            preprocess,
            dim,
            context_length,
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

    /// Tokens of a text the model reads; the rest is cut off.
    pub(crate) fn context_length(&self) -> usize {
        self.context_length
    }

    /// The unit embedding of `query`, once the worker gets to it; `slot` is held until then.
    pub(crate) async fn embed(&self, query: Query, slot: Slot) -> Result<Vec<f32>, ApiError> {
        let (reply, answer) = oneshot::channel();
        let slot = Some(slot);
        self.tx
            .try_send(Job { query, reply, slot })
            .map_err(|_| ApiError::busy(format!("{QUEUE} queries are already waiting")))?;
        answer
            .await
            .map_err(|_| ApiError::internal("the model worker stopped".into()))?
            .map_err(ApiError::internal)
    }
}

fn work(clip: &Clip, mut rx: mpsc::Receiver<Job>) {
    while let Some(jobs) = next_batch(&mut rx) {
        let (mut texts, mut images) = (Vec::new(), Vec::new());
        // The requests' slots, taken until their batch is embedded.
        let mut slots = Vec::with_capacity(jobs.len());
        for job in jobs {
            slots.push(job.slot);
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
        drop(slots);
    }
}

/// The next job (waiting for one) and all others already queued, up to [`DEFAULT_BATCH`];
/// `None` once every handle is gone.
fn next_batch(rx: &mut mpsc::Receiver<Job>) -> Option<Vec<Job>> {
    let mut jobs = vec![rx.blocking_recv()?];
    while jobs.len() < DEFAULT_BATCH {
        match rx.try_recv() {
            Ok(j) => jobs.push(j),
            Err(_) => break,
        }
    }
    Some(jobs)
}

/// Embeds a batch in one call and sends each job its row, or the batch's error (a panic in
/// the model included: the worker lives on for the next batch).
fn answer<T>(jobs: Vec<(T, Reply)>, embed: impl FnOnce(Vec<T>) -> crate::Result<Embeddings>) {
    if jobs.is_empty() {
        return;
    }
    let (inputs, replies): (Vec<T>, Vec<_>) = jobs.into_iter().unzip();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| embed(inputs)))
        .map_err(|_| "the model panicked on this batch".to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    match result {
        Ok(e) => {
            for (reply, row) in replies.into_iter().zip(e.rows()) {
                let _ = reply.send(Ok(row.to_vec()));
            }
        }
        Err(err) => {
            for reply in replies {
                let _ = reply.send(Err(err.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(text: &str) -> (Job, oneshot::Receiver<Result<Vec<f32>, String>>) {
        let (reply, rx) = oneshot::channel();
        let query = Query::Text(text.into());
        let slot = None;
        (Job { query, reply, slot }, rx)
    }

    #[test]
    fn queued_queries_are_taken_together_up_to_a_batch() {
        let (tx, mut rx) = mpsc::channel(QUEUE);
        for i in 0..DEFAULT_BATCH + 8 {
            assert!(tx.try_send(job(&i.to_string()).0).is_ok());
        }
        drop(tx);
        let sizes: Vec<usize> =
            std::iter::from_fn(|| next_batch(&mut rx).map(|b| b.len())).collect();
        assert_eq!(sizes, [DEFAULT_BATCH, 8]);
    }

    #[test]
    fn a_batch_answers_each_query_with_its_own_row_and_survives_a_panic() {
        let clip = Clip::from_dir("tests/fixtures/hf_tiny").unwrap();
        let texts = ["a red circle", "a blue square", "a cat"];
        let (jobs, answers): (Vec<_>, Vec<_>) = texts.iter().map(|t| job(t)).unzip();
        let jobs = jobs.into_iter().map(|j| match j.query {
            Query::Text(t) => (t, j.reply),
            Query::Pixels(_) => unreachable!(),
        });
        answer(jobs.collect(), |t| clip.embed_texts(&t));
        for (text, mut got) in texts.iter().zip(answers) {
            let alone = clip.embed_texts(&[text]).unwrap();
            let row = got.try_recv().unwrap().unwrap();
            let diff = row
                .iter()
                .zip(alone.row(0))
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(diff < 1e-5, "{text}: batched row differs by {diff}");
        }
        let (j, mut got) = job("x");
        answer(vec![((), j.reply)], |_: Vec<()>| panic!("boom"));
        assert!(got.try_recv().unwrap().unwrap_err().contains("panicked"));
    }
}
