//! A filter that recurses without bound: the host must turn the exhausted
//! stack into a trap.

use std::sync::atomic::{AtomicU64, Ordering};

use busbar_sdk::prelude::*;

/// How deep the recursion went; a side effect after the recursive call, so
/// the compiler cannot turn the recursion into a loop.
static UNWOUND: AtomicU64 = AtomicU64::new(0);

/// Recurses until the stack runs out (or the configured `depth`, for native
/// tests).
pub struct Deep;

#[inline(never)]
fn descend(depth: u64, limit: u64) -> u64 {
    if depth >= limit {
        return depth;
    }
    let reached = descend(std::hint::black_box(depth + 1), limit);
    UNWOUND.fetch_add(1, Ordering::Relaxed);
    reached
}

impl Filter for Deep {
    fn filter(_event: &Event, cx: &Context) -> Result<bool, PluginError> {
        let limit: u64 = cx.config().parse_or("depth", u64::MAX)?;
        Ok(descend(0, limit) == limit)
    }
}

busbar_sdk::filter!(Deep);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recurses_to_the_configured_depth() {
        let cx = Context::new(Config::from_pairs([("depth", "1000")]));
        assert!(Deep::filter(&Event::new("1", "s", "t"), &cx).unwrap());
        assert!(UNWOUND.load(Ordering::Relaxed) >= 1000);
    }
}
