//! The bounded write queue every tier writes through: a push never waits, a full queue drops
//! and counts, and one consumer (a thread or an async task) drains it in batches.

use core::future::Future;
use core::pin::Pin;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use core::task::{Context, Poll, Waker};
use std::collections::VecDeque;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

/// A bounded multi-producer, single-consumer queue for a tier's writes.
///
/// The handshake path pushes ([`push`](Self::push)) and never waits: when the queue is full the
/// write is dropped and counted ([`dropped`](Self::dropped)), since a write a tier misses only
/// costs a full handshake later. The tier's writer drains it in batches, from a thread
/// ([`wait`](Self::wait)) or from an async task ([`ready`](Self::ready)).
///
/// ```
/// use reprise::WriteQueue;
/// let q = WriteQueue::new(2);
/// assert!(q.push(1) && q.push(2));
/// assert!(!q.push(3)); // full: dropped, and counted
/// assert_eq!(q.dropped(), 1);
/// let mut batch = Vec::new();
/// assert_eq!(q.drain(16, &mut batch), 2);
/// assert_eq!(batch, [1, 2]);
/// ```
#[derive(Debug)]
pub struct WriteQueue<T> {
    items: Mutex<VecDeque<T>>,
    capacity: usize,
    pushed: AtomicU64,
    dropped: AtomicU64,
    closed: AtomicBool,
    /// Wakes a consumer thread.
    ready: Condvar,
    /// Wakes a consumer task.
    waker: Mutex<Option<Waker>>,
}

impl<T> WriteQueue<T> {
    /// A queue that holds at most `capacity` writes (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            items: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            pushed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            ready: Condvar::new(),
            waker: Mutex::new(None),
        }
    }

    /// Queues a write; returns `false`, and counts it as dropped, if the queue is full or
    /// closed.
    pub fn push(&self, item: T) -> bool {
        {
            let mut items = self.items.lock();
            if items.len() >= self.capacity || self.closed.load(Ordering::Acquire) {
                drop(items);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            items.push_back(item);
        }
        self.pushed.fetch_add(1, Ordering::Relaxed);
        self.wake();
        true
    }

    /// Moves up to `max` queued writes, oldest first, to `out`; returns how many.
    pub fn drain(&self, max: usize, out: &mut Vec<T>) -> usize {
        let mut items = self.items.lock();
        let n = items.len().min(max);
        out.extend(items.drain(..n));
        n
    }

    /// Blocks the calling thread until a write is queued, the queue is closed, or `timeout`
    /// passes. Returns whether a write is queued.
    pub fn wait(&self, timeout: Duration) -> bool {
        let mut items = self.items.lock();
        if items.is_empty() && !self.closed.load(Ordering::Acquire) {
            self.ready.wait_for(&mut items, timeout);
        }
        !items.is_empty()
    }

    /// Resolves once a write is queued or the queue is closed; for a consumer task.
    pub fn ready(&self) -> Ready<'_, T> {
        Ready { queue: self }
    }

    /// Closes the queue: later pushes are dropped, and waiting consumers wake up. What is
    /// queued stays, for the consumer to drain.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake();
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Writes queued now.
    pub fn len(&self) -> usize {
        self.items.lock().len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most writes the queue holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Writes queued since the queue was made.
    pub fn pushed(&self) -> u64 {
        self.pushed.load(Ordering::Relaxed)
    }

    /// Writes dropped because the queue was full or closed.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn wake(&self) {
        // Take the lock so that a consumer between its check and its wait is not missed.
        drop(self.items.lock());
        self.ready.notify_one();
        if let Some(waker) = self.waker.lock().take() {
            waker.wake();
        }
    }
}

/// The future of [`WriteQueue::ready`].
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct Ready<'a, T> {
    queue: &'a WriteQueue<T>,
}

impl<T> Future for Ready<'_, T> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let queue = self.queue;
        let pending = || queue.items.lock().is_empty() && !queue.is_closed();
        if !pending() {
            return Poll::Ready(());
        }
        *queue.waker.lock() = Some(cx.waker().clone());
        // A push between the first check and the registration would have found no waker.
        if pending() {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn a_full_queue_drops_and_counts_and_a_closed_one_refuses() {
        let q = WriteQueue::new(3);
        for i in 0..5 {
            q.push(i);
        }
        assert_eq!((q.len(), q.pushed(), q.dropped()), (3, 3, 2));
        let mut out = Vec::new();
        assert_eq!(q.drain(2, &mut out), 2);
        assert_eq!(out, [0, 1]);
        q.close();
        assert!(!q.push(9));
        assert_eq!(q.dropped(), 3);
        assert!(q.wait(Duration::from_secs(5)), "one write is still queued");
        out.clear();
        q.drain(10, &mut out);
        assert_eq!(out, [2]);
        assert!(
            !q.wait(Duration::from_secs(5)),
            "closed and empty: returns at once"
        );
    }

    #[test]
    fn a_waiting_thread_wakes_for_a_push() {
        let q = Arc::new(WriteQueue::new(8));
        let consumer = {
            let q = Arc::clone(&q);
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline {
                    if q.wait(Duration::from_millis(100)) {
                        let mut out = Vec::new();
                        q.drain(8, &mut out);
                        return out;
                    }
                }
                Vec::new()
            })
        };
        q.push(42u32);
        assert_eq!(consumer.join().ok(), Some(vec![42]));
    }

    #[test]
    fn a_task_wakes_for_a_push() {
        use std::task::Wake;
        struct Flag(AtomicBool);
        impl Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let q = WriteQueue::new(8);
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = Waker::from(Arc::clone(&flag));
        let mut cx = Context::from_waker(&waker);
        let mut ready = q.ready();
        assert!(Pin::new(&mut ready).poll(&mut cx).is_pending());
        q.push(1u8);
        assert!(flag.0.load(Ordering::SeqCst), "the push woke the task");
        assert!(Pin::new(&mut ready).poll(&mut cx).is_ready());
    }
}
