//! Acknowledgement bookkeeping for backends whose log is totally ordered
//! (SQLite, memory): entries are handed out in position order and acked in
//! any order; what can be persisted as "routed" is the highest position
//! below which everything is acknowledged.

use std::collections::BTreeSet;

/// Positions handed out and not yet acknowledged, and the resume point.
#[derive(Debug, Default)]
pub(crate) struct Watermark {
    /// Handed out, not yet acknowledged.
    outstanding: BTreeSet<i64>,
    /// The highest position handed out so far.
    high: i64,
}

impl Watermark {
    /// Starts after `routed` (everything up to it is acknowledged).
    pub(crate) fn starting_after(routed: i64) -> Self {
        Self {
            outstanding: BTreeSet::new(),
            high: routed,
        }
    }

    /// Records that `seq` was handed out (positions only ever increase).
    pub(crate) fn handed_out(&mut self, seq: i64) {
        self.outstanding.insert(seq);
        self.high = self.high.max(seq);
    }

    /// Records an acknowledgement; unknown positions are ignored.
    pub(crate) fn acked(&mut self, seq: i64) {
        self.outstanding.remove(&seq);
    }

    /// The highest position such that it and everything before it is acknowledged.
    pub(crate) fn low(&self) -> i64 {
        match self.outstanding.first() {
            Some(seq) => seq - 1,
            None => self.high,
        }
    }

    /// The highest position handed out.
    pub(crate) fn high(&self) -> i64 {
        self.high
    }

    /// How many are handed out and not acknowledged.
    pub(crate) fn in_flight(&self) -> usize {
        self.outstanding.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_waits_for_the_oldest_outstanding_entry() {
        let mut w = Watermark::starting_after(0);
        for seq in 1..=3 {
            w.handed_out(seq);
        }
        assert_eq!(w.low(), 0);
        w.acked(2);
        assert_eq!(w.low(), 0);
        w.acked(1);
        assert_eq!(w.low(), 2);
        w.acked(3);
        assert_eq!((w.low(), w.in_flight(), w.high()), (3, 0, 3));
        w.acked(99);
        assert_eq!(w.low(), 3);
    }
}
