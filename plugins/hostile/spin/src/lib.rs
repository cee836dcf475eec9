//! A filter that never returns: the host must interrupt it (epoch deadline).

use busbar_sdk::prelude::*;

/// Loops forever.
pub struct Spin;

impl Filter for Spin {
    fn filter(_event: &Event, cx: &Context) -> Result<bool, PluginError> {
        // Give up only for a configured iteration count, so native tests end.
        let limit: u64 = cx.config().parse_or("iterations", u64::MAX)?;
        let mut i = 0u64;
        while std::hint::black_box(i) < limit {
            i = i.wrapping_add(1);
        }
        Ok(i.is_multiple_of(2))
    }
}

busbar_sdk::filter!(Spin);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_only_at_the_configured_limit() {
        let cx = Context::new(Config::from_pairs([("iterations", "1001")]));
        assert!(!Spin::filter(&Event::new("1", "s", "t"), &cx).unwrap());
    }
}
