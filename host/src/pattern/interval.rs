//! Point-in-intervals lookup for numeric ranges and CIDR blocks in a rule set.
//!
//! A static segment tree: the interval end points cut the key space into elementary
//! segments; each interval is stored at the O(log n) tree nodes that exactly cover its
//! segments, and a lookup walks from the point's segment to the root collecting what it
//! finds. Build is O(n log n); a lookup is O(log n + matches).

/// Builder collecting closed intervals `[first, last]` with a value each.
#[derive(Clone, Debug, Default)]
pub(crate) struct IntervalBuilder {
    intervals: Vec<(u128, u128, u32)>,
}

impl IntervalBuilder {
    /// Adds an interval (ignored if empty).
    pub(crate) fn add(&mut self, first: u128, last: u128, value: u32) {
        if first <= last {
            self.intervals.push((first, last, value));
        }
    }

    /// Freezes the intervals into a lookup structure.
    pub(crate) fn build(self) -> IntervalIndex {
        let mut coords: Vec<u128> = Vec::with_capacity(self.intervals.len() * 2);
        for &(first, last, _) in &self.intervals {
            coords.push(first);
            if let Some(end) = last.checked_add(1) {
                coords.push(end);
            }
        }
        coords.sort_unstable();
        coords.dedup();
        let n = coords.len();
        let mut tree = vec![Vec::new(); 2 * n];
        for (first, last, value) in self.intervals {
            // Segment i is [coords[i], coords[i + 1]); the last one runs to infinity.
            let mut lo = coords.partition_point(|&c| c < first) + n;
            let mut hi = match last.checked_add(1) {
                Some(end) => coords.partition_point(|&c| c < end),
                None => n,
            } + n;
            while lo < hi {
                if lo & 1 == 1 {
                    tree[lo].push(value);
                    lo += 1;
                }
                if hi & 1 == 1 {
                    hi -= 1;
                    tree[hi].push(value);
                }
                lo >>= 1;
                hi >>= 1;
            }
        }
        IntervalIndex { coords, tree }
    }
}

/// Frozen interval lookup.
#[derive(Clone, Debug, Default)]
pub(crate) struct IntervalIndex {
    coords: Vec<u128>,
    tree: Vec<Vec<u32>>,
}

impl IntervalIndex {
    /// Whether there are no intervals.
    pub(crate) fn is_empty(&self) -> bool {
        self.coords.is_empty()
    }

    /// Calls `found` with the value of every interval containing `point`.
    pub(crate) fn stab(&self, point: u128, mut found: impl FnMut(u32)) {
        let segment = self.coords.partition_point(|&c| c <= point);
        if segment == 0 {
            return;
        }
        let mut node = segment - 1 + self.coords.len();
        while node >= 1 {
            if let Some(values) = self.tree.get(node) {
                values.iter().for_each(|&v| found(v));
            }
            node >>= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_brute_force() {
        let intervals = [
            (0u128, 10u128),
            (5, 5),
            (3, 7),
            (8, u128::MAX),
            (20, 30),
            (0, 0),
            (11, 12),
        ];
        let mut b = IntervalBuilder::default();
        for (i, &(f, l)) in intervals.iter().enumerate() {
            b.add(f, l, i as u32);
        }
        let index = b.build();
        for point in (0..40).chain([u128::MAX - 1, u128::MAX]) {
            let mut got = Vec::new();
            index.stab(point, |v| got.push(v));
            got.sort_unstable();
            let want: Vec<u32> = intervals
                .iter()
                .enumerate()
                .filter(|(_, (f, l))| *f <= point && point <= *l)
                .map(|(i, _)| i as u32)
                .collect();
            assert_eq!(got, want, "point {point}");
        }
    }

    #[test]
    fn empty_index_finds_nothing() {
        let index = IntervalBuilder::default().build();
        assert!(index.is_empty());
        index.stab(5, |_| panic!("nothing to find"));
    }
}
