//! [`DeadlineQueue`]: the Closer's deadline queue, constant cost per timeout
//! whatever the number pending.
//!
//! Deadlines are `now + timeout` with a monotonic `now`, and a policy has few
//! distinct timeouts (flush and peer: 3 s each by default). Deadlines made with the
//! same timeout therefore arrive in order. The queue keeps a few FIFO *lanes*, each
//! sorted by construction: a deadline joins the lane whose last deadline is the
//! latest one not after it (usually the lane of its own timeout), or opens a new
//! lane. Push and pop cost O(lanes), not O(log n) like a heap, and touch memory
//! sequentially. Stale entries (a connection that finished or moved to another
//! stage) are not removed: the owner recognises them by their key when they expire.

use std::collections::VecDeque;
use std::time::Instant;

/// Beyond this many lanes (deadlines arriving far out of order, which monotonic
/// time with a handful of timeouts does not produce), new deadlines are inserted
/// in sorted position into the closest lane instead: still correct, just slower.
const MAX_LANES: usize = 16;

/// A queue of `(deadline, key)`, popped in deadline order, at a cost per push and
/// per pop that depends on the number of distinct timeouts in use, not on the
/// number of entries. The [`Closer`](crate::Closer) uses it; it is public for event
/// loops that drive many [`Shutdown`](crate::Shutdown)s themselves.
///
/// Entries are never removed early: when a key's deadline changes, push the new
/// one and ignore the old entry when it pops (compare it with what you expect).
#[derive(Debug)]
pub struct DeadlineQueue<K> {
    lanes: Vec<VecDeque<(Instant, K)>>,
    len: usize,
}

impl<K> Default for DeadlineQueue<K> {
    fn default() -> Self {
        DeadlineQueue {
            lanes: Vec::new(),
            len: 0,
        }
    }
}

impl<K> DeadlineQueue<K> {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Entries in the queue, stale ones included.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the queue is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `key` with `deadline`.
    pub fn push(&mut self, deadline: Instant, key: K) {
        self.len += 1;
        // The lane whose tail is the latest deadline not after this one.
        let mut best: Option<(usize, Instant)> = None;
        for (i, lane) in self.lanes.iter().enumerate() {
            if let Some(&(tail, _)) = lane.back() {
                let later = match best {
                    None => true,
                    Some((_, t)) => tail > t,
                };
                if tail <= deadline && later {
                    best = Some((i, tail));
                }
            }
        }
        if let Some((i, _)) = best {
            self.lanes[i].push_back((deadline, key));
        } else if self.lanes.len() < MAX_LANES {
            self.lanes.push(VecDeque::from([(deadline, key)]));
        } else {
            // Out of lanes: keep lane 0 sorted by inserting in place.
            let lane = &mut self.lanes[0];
            let at = lane.partition_point(|&(d, _)| d <= deadline);
            lane.insert(at, (deadline, key));
        }
    }

    /// The earliest deadline, stale or not.
    pub fn peek(&self) -> Option<Instant> {
        self.lanes
            .iter()
            .filter_map(|lane| lane.front().map(|&(d, _)| d))
            .min()
    }

    /// Removes and returns the earliest entry if its deadline is at or before `now`.
    pub fn pop_expired(&mut self, now: Instant) -> Option<(Instant, K)> {
        let (i, _) = self
            .lanes
            .iter()
            .enumerate()
            .filter_map(|(i, lane)| lane.front().map(|&(d, _)| (i, d)))
            .filter(|&(_, d)| d <= now)
            .min_by_key(|&(_, d)| d)?;
        let entry = self.lanes[i].pop_front();
        if self.lanes[i].is_empty() {
            self.lanes.swap_remove(i);
        }
        self.len -= 1;
        entry
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn pops_in_deadline_order_across_lanes() {
        let t0 = Instant::now();
        let mut q = DeadlineQueue::new();
        // Two timeouts (30 and 10 ms) interleaved, as flush and peer deadlines are.
        for i in 0..50u64 {
            q.push(t0 + ms(i) + ms(30), (i, 30));
            q.push(t0 + ms(i) + ms(10), (i, 10));
        }
        assert_eq!(q.lanes.len(), 2);
        assert_eq!(q.len(), 100);
        assert_eq!(q.peek(), Some(t0 + ms(10)));
        assert_eq!(q.pop_expired(t0 + ms(9)), None);
        let mut last = t0;
        let mut n = 0;
        while let Some((d, _)) = q.pop_expired(t0 + ms(1000)) {
            assert!(d >= last);
            last = d;
            n += 1;
        }
        assert_eq!(n, 100);
        assert!(q.lanes.is_empty() && q.peek().is_none());
    }

    #[test]
    fn out_of_order_deadlines_stay_correct_past_the_lane_limit() {
        let t0 = Instant::now();
        let mut q = DeadlineQueue::new();
        // Strictly decreasing deadlines: every push wants a new lane.
        for i in (0..100u64).rev() {
            q.push(t0 + ms(i), i);
        }
        assert_eq!(q.lanes.len(), MAX_LANES);
        let popped: Vec<u64> =
            std::iter::from_fn(|| q.pop_expired(t0 + ms(1000)).map(|(_, k)| k)).collect();
        assert_eq!(popped, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn equal_deadlines_keep_insertion_order() {
        let t0 = Instant::now();
        let mut q = DeadlineQueue::new();
        for k in 0..5 {
            q.push(t0, k);
        }
        let popped: Vec<i32> = std::iter::from_fn(|| q.pop_expired(t0).map(|(_, k)| k)).collect();
        assert_eq!(popped, vec![0, 1, 2, 3, 4]);
    }
}
