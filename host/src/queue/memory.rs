//! The embedded deployment's queue: in this process, nothing persisted. After a restart
//! the reconciler rebuilds it from the `QUEUED` rows.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

use super::{Delivery, Queue, QueueError};
use crate::domain::{Millis, now_millis};

#[derive(Debug, Default)]
pub struct MemoryQueue {
    state: Mutex<State>,
    available: Notify,
}

#[derive(Debug, Default)]
struct State {
    ready: VecDeque<String>,
    /// Ids in `ready`, so a reconciler pass re-pushing queued rows adds no duplicates.
    queued: HashSet<String>,
    delayed: BinaryHeap<Reverse<(Millis, String)>>,
}

impl State {
    fn enqueue(&mut self, id: String) -> bool {
        if self.queued.insert(id.clone()) {
            self.ready.push_back(id);
            return true;
        }
        false
    }

    /// Moves due delayed ids to `ready`; returns when the next one is due.
    fn promote_due(&mut self, now: Millis) -> Option<Millis> {
        while let Some(Reverse((due, _))) = self.delayed.peek() {
            if *due > now {
                return Some(*due);
            }
            let Some(Reverse((_, id))) = self.delayed.pop() else {
                break;
            };
            self.enqueue(id);
        }
        None
    }
}

impl MemoryQueue {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ids waiting to be popped now (delayed ones excluded).
    pub fn len(&self) -> usize {
        self.state().ready.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait::async_trait]
impl Queue for MemoryQueue {
    async fn push(&self, ids: &[String]) -> Result<(), QueueError> {
        let added = {
            let mut state = self.state();
            ids.iter().filter(|id| state.enqueue((*id).clone())).count()
        };
        if added > 0 {
            self.available.notify_waiters();
            // A worker between its check and its wait would miss `notify_waiters`.
            self.available.notify_one();
        }
        Ok(())
    }

    async fn push_delayed(&self, id: &str, due: Millis) -> Result<(), QueueError> {
        self.state().delayed.push(Reverse((due, id.to_owned())));
        self.available.notify_one();
        Ok(())
    }

    async fn pop(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.available.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let next_due = {
                let mut state = self.state();
                let next_due = state.promote_due(now_millis());
                if !state.ready.is_empty() {
                    let take = max.min(state.ready.len());
                    let ids: Vec<String> = state.ready.drain(..take).collect();
                    for id in &ids {
                        state.queued.remove(id);
                    }
                    let more = !state.ready.is_empty();
                    drop(state);
                    if more {
                        // Let another idle worker take the rest.
                        self.available.notify_one();
                    }
                    return Ok(ids
                        .into_iter()
                        .map(|id| Delivery {
                            id,
                            receipt: String::new(),
                        })
                        .collect());
                }
                next_due
            };
            let mut wake_at = deadline;
            if let Some(due) = next_due {
                let in_ms = (due - now_millis()).max(0) as u64;
                wake_at = wake_at.min(tokio::time::Instant::now() + Duration::from_millis(in_ms));
            }
            if tokio::time::timeout_at(wake_at, notified).await.is_err()
                && tokio::time::Instant::now() >= deadline
            {
                return Ok(Vec::new());
            }
        }
    }

    async fn ack(&self, _deliveries: &[Delivery]) -> Result<(), QueueError> {
        Ok(())
    }

    async fn ping(&self) -> Result<(), QueueError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(deliveries: &[Delivery]) -> Vec<&str> {
        deliveries.iter().map(|d| d.id.as_str()).collect()
    }

    #[tokio::test]
    async fn pushed_ids_come_out_in_order_without_duplicates() {
        let queue = MemoryQueue::default();
        queue
            .push(&["a".into(), "b".into(), "a".into()])
            .await
            .unwrap();
        let got = queue.pop(10, Duration::from_millis(10)).await.unwrap();
        assert_eq!(ids(&got), ["a", "b"]);
        assert!(
            queue
                .pop(10, Duration::from_millis(10))
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn pop_takes_at_most_max() {
        let queue = MemoryQueue::default();
        queue
            .push(&["a".into(), "b".into(), "c".into()])
            .await
            .unwrap();
        assert_eq!(
            ids(&queue.pop(2, Duration::ZERO).await.unwrap()),
            ["a", "b"]
        );
        assert_eq!(ids(&queue.pop(2, Duration::ZERO).await.unwrap()), ["c"]);
    }

    #[tokio::test]
    async fn a_waiting_pop_wakes_on_push() {
        let queue = std::sync::Arc::new(MemoryQueue::default());
        let waiter = tokio::spawn({
            let queue = queue.clone();
            async move { queue.pop(1, Duration::from_secs(5)).await.unwrap() }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        queue.push(&["x".into()]).await.unwrap();
        assert_eq!(ids(&waiter.await.unwrap()), ["x"]);
    }

    #[tokio::test]
    async fn delayed_ids_wait_until_due() {
        let queue = MemoryQueue::default();
        queue
            .push_delayed("later", now_millis() + 150)
            .await
            .unwrap();
        assert!(
            queue
                .pop(1, Duration::from_millis(20))
                .await
                .unwrap()
                .is_empty()
        );
        let got = queue.pop(1, Duration::from_secs(2)).await.unwrap();
        assert_eq!(ids(&got), ["later"]);
    }
}
