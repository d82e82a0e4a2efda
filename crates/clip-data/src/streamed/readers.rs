//! The threads that read shards, reused from one shard to the next. A thread per shard made
//! glibc give each new thread a malloc arena of its own, and peak memory crept up with the
//! shards read; a shard is still never kept waiting for another to finish: when no reader is
//! idle, a new one starts.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// One shard's reading, start to end.
pub(super) type Job = Box<dyn FnOnce() + Send>;

/// How long an idle reader waits for another shard before it ends.
const IDLE: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    idle: usize,
}

/// A stream's readers; cloned handles share them.
#[derive(Clone, Default)]
pub(super) struct Readers {
    inner: Arc<(Mutex<Queue>, Condvar)>,
}

impl Readers {
    /// Runs `job` on an idle reader, or on a new one; an error if no thread can be started.
    pub(super) fn run(&self, job: Job) -> std::io::Result<()> {
        let (lock, wake) = &*self.inner;
        let mut queue = lock.lock().expect("reader queue");
        if queue.idle > queue.jobs.len() {
            queue.jobs.push_back(job);
            wake.notify_one();
            return Ok(());
        }
        drop(queue);
        let readers = self.clone();
        std::thread::Builder::new()
            .name("shard-reader".into())
            .spawn(move || {
                job();
                readers.serve();
            })
            .map(drop)
    }

    /// Takes queued jobs until none comes for [`IDLE`].
    fn serve(&self) {
        let (lock, wake) = &*self.inner;
        let mut queue = lock.lock().expect("reader queue");
        loop {
            if let Some(job) = queue.jobs.pop_front() {
                drop(queue);
                job();
                queue = lock.lock().expect("reader queue");
                continue;
            }
            queue.idle += 1;
            let (q, waited) = wake.wait_timeout(queue, IDLE).expect("reader queue");
            queue = q;
            queue.idle -= 1;
            if waited.timed_out() && queue.jobs.is_empty() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    #[test]
    fn readers_are_reused_and_never_keep_a_job_waiting() {
        let readers = Readers::default();
        let (tx, rx) = channel();
        // Two jobs that block until released run at once (two threads).
        let (hold_a, release_a) = channel::<()>();
        let (hold_b, release_b) = channel::<()>();
        for (i, release) in [(0, release_a), (1, release_b)] {
            let tx = tx.clone();
            readers
                .run(Box::new(move || {
                    tx.send((i, std::thread::current().id())).unwrap();
                    release.recv().unwrap();
                }))
                .unwrap();
        }
        let first: Vec<_> = (0..2).map(|_| rx.recv().unwrap()).collect();
        assert_ne!(first[0].1, first[1].1, "both ran at once");
        hold_a.send(()).unwrap();
        hold_b.send(()).unwrap();
        // Once idle, a later job runs on one of those threads.
        std::thread::sleep(Duration::from_millis(100));
        let tx2 = tx.clone();
        readers
            .run(Box::new(move || {
                tx2.send((2, std::thread::current().id())).unwrap()
            }))
            .unwrap();
        let (_, id) = rx.recv().unwrap();
        assert!(first.iter().any(|(_, t)| *t == id), "a reader was reused");
    }
}
