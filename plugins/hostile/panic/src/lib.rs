//! A filter that panics: in a component a panic is a trap, which the host
//! must report as a plugin failure without harming other invocations.

use busbar_sdk::prelude::*;

/// The message of the panic, for host tests to look for in captured stderr.
pub const MESSAGE: &str = "hostile plugin panicked on purpose";

/// Panics on every event.
pub struct Panic;

impl Filter for Panic {
    fn filter(event: &Event, _cx: &Context) -> Result<bool, PluginError> {
        panic!("{MESSAGE} (event {})", event.id)
    }
}

busbar_sdk::filter!(Panic);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "hostile plugin panicked on purpose")]
    fn panics() {
        let _ = Panic::filter(&Event::new("1", "s", "t"), &Context::default());
    }
}
