//! Group commit: writes that arrive while one is being sent wait for it, and the first of them
//! then sends all that queued meanwhile as one batch (up to a bound), each caller learning its
//! batch's outcome. Under load, many grants' appends to the audit log and the indexes share one
//! script (and one expiry or head update per key) instead of one each; alone, a write goes at
//! once, so it costs nothing when the broker is idle.
//!
//! The lock the writer holds is tokio's: a writer whose call is dropped mid-write drops its
//! batch's answers, and those callers see a failure (and repair it), never a hang.

use std::sync::Mutex;

use tokio::sync::oneshot;

/// Items waiting for the next batch, and the lock whose holder writes them; each item is
/// answered with an `O`.
pub(super) struct GroupCommit<T, O> {
    waiting: Mutex<Vec<(T, oneshot::Sender<O>)>>,
    writer: tokio::sync::Mutex<()>,
    /// The most weight one batch carries (at least one item).
    most: usize,
}

impl<T, O> GroupCommit<T, O> {
    pub(super) fn new(most: usize) -> Self {
        Self {
            waiting: Mutex::new(Vec::new()),
            writer: tokio::sync::Mutex::new(()),
            most,
        }
    }

    /// Writes `item`, alone or in a batch with others: `write` gets a batch (oldest first, at
    /// most `most` by `weight`) and answers each of its items, in order; `failed` is the answer
    /// of an item whose batch was abandoned or lost.
    pub(super) async fn submit<W, F>(&self, item: T, weight: fn(&T) -> usize, write: W, failed: fn(String) -> O) -> O
    where
        W: Fn(Vec<T>) -> F,
        F: Future<Output = Vec<O>>,
    {
        let (sender, mut receiver) = oneshot::channel();
        if let Ok(mut waiting) = self.waiting.lock() {
            waiting.push((item, sender));
        }
        let _writer = self.writer.lock().await;
        loop {
            match receiver.try_recv() {
                Ok(outcome) => return outcome,
                Err(oneshot::error::TryRecvError::Closed) => {
                    return failed("the batch this write was part of was abandoned".to_owned());
                }
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            // Not written yet: this caller writes what is queued, oldest first, until its own
            // item is written (a full batch may leave it for the next).
            let batch = self.take(weight);
            if batch.is_empty() {
                return failed("the write was lost from its queue".to_owned());
            }
            let (items, answers): (Vec<T>, Vec<oneshot::Sender<O>>) = batch.into_iter().unzip();
            let count = items.len();
            let mut outcomes = write(items).await.into_iter();
            for answer in answers {
                let outcome = outcomes
                    .next()
                    .unwrap_or_else(|| failed(format!("a batch of {count} writes answered fewer")));
                let _ = answer.send(outcome);
            }
        }
    }

    fn take(&self, weight: fn(&T) -> usize) -> Vec<(T, oneshot::Sender<O>)> {
        let Ok(mut waiting) = self.waiting.lock() else {
            return Vec::new();
        };
        let (mut carried, mut count) = (0, 0);
        for (item, _) in waiting.iter() {
            if count > 0 && carried + weight(item) > self.most {
                break;
            }
            carried += weight(item);
            count += 1;
        }
        waiting.drain(..count).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_queued_behind_one_go_out_together_and_each_learns_its_outcome() {
        let commit = Arc::new(GroupCommit::<usize, Result<(), String>>::new(10));
        let batches = Arc::new(Mutex::new(Vec::new()));
        let writes = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..40)
            .map(|n| {
                let (commit, batches, writes) = (commit.clone(), batches.clone(), writes.clone());
                tokio::spawn(async move {
                    commit
                        .submit(
                            n,
                            |_| 1,
                            |items: Vec<usize>| {
                                let (batches, writes) = (batches.clone(), writes.clone());
                                async move {
                                    writes.fetch_add(1, Ordering::SeqCst);
                                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                                    let outcomes = items
                                        .iter()
                                        .map(|item| {
                                            if item % 7 == 0 {
                                                Err(format!("{item} failed"))
                                            } else {
                                                Ok(())
                                            }
                                        })
                                        .collect();
                                    batches.lock().unwrap().push(items);
                                    outcomes
                                }
                            },
                            Err,
                        )
                        .await
                })
            })
            .collect();
        for (n, task) in tasks.into_iter().enumerate() {
            let outcome = task.await.unwrap();
            assert_eq!(outcome.is_err(), n % 7 == 0, "{n}: {outcome:?}");
        }
        let batches = batches.lock().unwrap();
        let mut written: Vec<usize> = batches.iter().flatten().copied().collect();
        written.sort_unstable();
        assert_eq!(written, (0..40).collect::<Vec<_>>(), "each item written once");
        assert!(batches.iter().all(|batch| !batch.is_empty() && batch.len() <= 10));
        assert!(writes.load(Ordering::SeqCst) < 40, "some writes shared a batch");
    }

    #[tokio::test]
    async fn a_writer_dropped_mid_write_fails_its_batch_and_the_next_write_goes_through() {
        let commit = Arc::new(GroupCommit::<usize, Result<(), String>>::new(10));
        let stalled = {
            let commit = commit.clone();
            tokio::spawn(async move {
                commit
                    .submit(
                        1,
                        |_| 1,
                        |_items: Vec<usize>| async {
                            std::future::pending::<()>().await;
                            Vec::new()
                        },
                        Err,
                    )
                    .await
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        stalled.abort();
        let _ = stalled.await;
        let outcome = commit
            .submit(
                2,
                |_| 1,
                |items: Vec<usize>| async move { items.iter().map(|_| Ok(())).collect() },
                Err,
            )
            .await;
        assert_eq!(outcome, Ok(()));
    }
}
