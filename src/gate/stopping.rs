//! Whether the server is stopping, as the gate asks it on every request.
//!
//! Phase: the gate's wait for each next head, and each request's `last`.
//!
//! Pingora hands the gate a `ShutdownWatch`, a `tokio::sync::watch`: reading it takes the
//! channel's read lock, and waiting on it adds and removes a waiter under the mutex of the one
//! `Notify` that every connection on every worker shares. The gate read it three times and
//! waited on it once per keep-alive request, so every request wrote the same few cache lines
//! from every core. Pingora's proxy met the same cost in its own request reads and shards its
//! waiters by worker thread (`ShardedNotify`, private to pingora-proxy); this is that, for the
//! gate: a flag read with one load, and waiters on the current thread's shard.
//!
//! Invariant: a [`Stopping::wait`] made before [`Stopping::stop`] is woken by it, and one made
//! after it returns at once, so no connection waits out its idle timer through a shutdown.

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::Poll;

use tokio::sync::Notify;

/// More shards than this buys nothing: few hosts run more workers per service.
const MAX_SHARDS: usize = 64;

/// The server's "stopping" flag, with its waiters spread over shards.
pub(super) struct Stopping {
    flag: AtomicBool,
    shards: Box<[Shard]>,
}

/// A shard's `Notify` on its own cache lines, so registering on one does not invalidate
/// another's.
#[repr(align(128))]
struct Shard(Notify);

impl Stopping {
    /// Shards for `threads` workers (a power of two, for the mask in [`Self::local`]).
    pub(super) fn new(threads: usize) -> Self {
        let shards = threads.clamp(1, MAX_SHARDS).next_power_of_two();
        Self {
            flag: AtomicBool::new(false),
            shards: (0..shards).map(|_| Shard(Notify::new())).collect(),
        }
    }

    /// The server has begun to stop.
    pub(super) fn is_set(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// Begin stopping: the flag, then every shard's waiters.
    pub(super) fn stop(&self) {
        self.flag.store(true, Ordering::Release);
        for shard in self.shards.iter() {
            shard.0.notify_waiters();
        }
    }

    /// Until the server stops. The waiter is registered before the flag is read, so a
    /// [`Self::stop`] between the two is not missed: `notify_waiters` wakes every `Notified`
    /// made before it, polled or not.
    pub(super) async fn wait(&self) {
        let mut notified = pin!(self.local().notified());
        poll_fn(|cx| {
            if notified.as_mut().poll(cx).is_ready() || self.is_set() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }

    /// The current thread's shard. A task that moves to another worker keeps the shard it
    /// registered on; [`Self::stop`] wakes them all.
    fn local(&self) -> &Notify {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static THREAD: usize = NEXT.fetch_add(1, Ordering::Relaxed);
        }
        // The shard count is a power of two, so the mask keeps the index in range.
        let index = THREAD.with(|thread| *thread) & (self.shards.len() - 1);
        &self.shards[index].0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn stop_wakes_every_waiter_on_every_shard_and_later_waits_return_at_once() {
        let stopping = Arc::new(Stopping::new(4));
        assert_eq!(stopping.shards.len(), 4);
        let waiters: Vec<_> = (0..32)
            .map(|_| {
                let stopping = stopping.clone();
                tokio::spawn(async move { stopping.wait().await })
            })
            .collect();
        tokio::task::yield_now().await;
        assert!(!stopping.is_set());
        assert!(waiters.iter().all(|w| !w.is_finished()), "woken early");
        stopping.stop();
        assert!(stopping.is_set());
        for waiter in waiters {
            tokio::time::timeout(Duration::from_secs(5), waiter)
                .await
                .expect("a waiter was not woken")
                .expect("waiter");
        }
        tokio::time::timeout(Duration::from_secs(5), stopping.wait())
            .await
            .expect("a wait after stop returns at once");
    }

    #[test]
    fn shards_are_a_power_of_two_within_bounds() {
        let count = |threads| Stopping::new(threads).shards.len();
        assert_eq!(count(0), 1);
        assert_eq!(count(1), 1);
        assert_eq!(count(3), 4);
        assert_eq!(count(8), 8);
        assert_eq!(count(1000), MAX_SHARDS);
    }
}
