//! Build slots handed out round-robin across owners (docs/access.md, "Quotas and fairness"):
//! with every slot taken, the next free one goes to the owner after the last served, not to
//! the oldest waiter, so one CI job queueing 200 builds cannot starve a colleague's one.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

#[derive(Default)]
struct State {
    free: usize,
    /// Owners with waiters, in turn order.
    ring: VecDeque<Arc<str>>,
    waiters: HashMap<Arc<str>, VecDeque<oneshot::Sender<SlotPermit>>>,
}

/// `n` slots shared fairly between owners.
pub struct FairSlots {
    state: Mutex<State>,
}

/// A held slot; dropping it hands the slot to the next owner in turn.
pub struct SlotPermit {
    slots: Arc<FairSlots>,
}

impl Drop for SlotPermit {
    fn drop(&mut self) {
        self.slots.release();
    }
}

impl FairSlots {
    pub fn new(n: usize) -> Arc<FairSlots> {
        Arc::new(FairSlots {
            state: Mutex::new(State {
                free: n,
                ..State::default()
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent at every step; a panic elsewhere cannot break it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a slot for `owner`. Cancel-safe: a waiter that goes away gives its turn (or
    /// the slot it was just handed) to the next.
    pub async fn acquire(self: &Arc<Self>, owner: &str) -> SlotPermit {
        let rx = {
            let mut st = self.lock();
            if st.free > 0 && st.ring.is_empty() {
                st.free -= 1;
                return SlotPermit {
                    slots: Arc::clone(self),
                };
            }
            let (tx, rx) = oneshot::channel();
            let owner: Arc<str> = Arc::from(owner);
            let queue = st.waiters.entry(Arc::clone(&owner)).or_default();
            queue.push_back(tx);
            if queue.len() == 1 {
                st.ring.push_back(owner);
            }
            rx
        };
        match rx.await {
            Ok(permit) => permit,
            // The sender is only dropped with a permit sent or the state gone: never here,
            // but a slot must be had either way.
            Err(_) => Box::pin(self.acquire(owner)).await,
        }
    }

    fn release(self: &Arc<Self>) {
        loop {
            let next = {
                let mut st = self.lock();
                let Some(owner) = st.ring.pop_front() else {
                    st.free += 1;
                    return;
                };
                let (tx, more) = match st.waiters.get_mut(&owner) {
                    Some(q) => (q.pop_front(), !q.is_empty()),
                    None => (None, false),
                };
                if more {
                    st.ring.push_back(owner);
                } else {
                    st.waiters.remove(&owner);
                }
                tx
            };
            let Some(tx) = next else { continue };
            if tx.is_closed() {
                continue;
            }
            // Sent outside the lock: a permit refused (the waiter left just now) is dropped
            // here and releases again.
            let _ = tx.send(SlotPermit {
                slots: Arc::clone(self),
            });
            return;
        }
    }

    /// Owners waiting, and slots free (for tests and the metrics).
    pub fn waiting(&self) -> usize {
        self.lock().waiters.values().map(VecDeque::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slots_go_round_robin_across_owners() {
        let slots = FairSlots::new(1);
        let first = slots.acquire("a").await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // `a` queues five, then `b` two: b's must not wait for all of a's.
        for (owner, n) in [("a", 5), ("b", 2)] {
            for i in 0..n {
                let (slots, order) = (Arc::clone(&slots), Arc::clone(&order));
                tasks.push(tokio::spawn(async move {
                    let _p = slots.acquire(owner).await;
                    order.lock().expect("lock").push(format!("{owner}{i}"));
                }));
                tokio::task::yield_now().await;
            }
        }
        while slots.waiting() < 7 {
            tokio::task::yield_now().await;
        }
        drop(first);
        for t in tasks {
            t.await.expect("task");
        }
        let order = order.lock().expect("lock").clone();
        assert_eq!(order, ["a0", "b0", "a1", "b1", "a2", "a3", "a4"]);
    }

    #[tokio::test]
    async fn a_waiter_that_leaves_gives_its_turn_away() {
        let slots = FairSlots::new(1);
        let held = slots.acquire("a").await;
        let gone = {
            let slots = Arc::clone(&slots);
            tokio::spawn(async move { slots.acquire("b").await })
        };
        while slots.waiting() < 1 {
            tokio::task::yield_now().await;
        }
        gone.abort();
        let _ = gone.await;
        drop(held);
        // The slot is free again, not lost with the waiter.
        let again = tokio::time::timeout(std::time::Duration::from_secs(1), slots.acquire("c"))
            .await
            .expect("a free slot");
        drop(again);
    }
}
