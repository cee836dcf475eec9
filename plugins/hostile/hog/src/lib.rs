//! A filter that allocates memory without bound: the host's memory limit
//! must stop it (a failed `memory.grow` aborts the guest).

use busbar_sdk::prelude::*;

/// Allocates 1 MiB blocks, touching each, until allocation fails (or the
/// configured `max_mib` is reached, for native tests).
pub struct Hog;

impl Filter for Hog {
    fn filter(_event: &Event, cx: &Context) -> Result<bool, PluginError> {
        let max_mib: usize = cx.config().parse_or("max_mib", usize::MAX)?;
        let mut blocks: Vec<Vec<u8>> = Vec::new();
        while blocks.len() < max_mib {
            blocks.push(std::hint::black_box(vec![0xAB; 1 << 20]));
        }
        Ok(std::hint::black_box(&blocks).len() == max_mib)
    }
}

busbar_sdk::filter!(Hog);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_the_configured_amount() {
        let cx = Context::new(Config::from_pairs([("max_mib", "4")]));
        assert!(Hog::filter(&Event::new("1", "s", "t"), &cx).unwrap());
    }
}
