//! A transformer whose output is far too large: the host must bound the
//! number and size of output events.
//!
//! Config: `events` (default 100000) events of `bytes` data bytes each
//! (default 16). The defaults flood the count (about 30 MiB of guest memory);
//! `events = 4, bytes = 8388608` floods the size instead. Much more than
//! either runs into the guest's memory limit before returning.

use busbar_sdk::prelude::*;

/// Returns `events` copies of the input with `bytes` bytes of data each.
pub struct FloodOutput;

impl Transformer for FloodOutput {
    fn transform(event: Event, cx: &Context) -> Result<Vec<Event>, PluginError> {
        let events: usize = cx.config().parse_or("events", 100_000)?;
        let bytes: usize = cx.config().parse_or("bytes", 16)?;
        Ok((0..events)
            .map(|i| {
                let mut part = event.derive(i);
                part.datacontenttype = Some("application/octet-stream".to_owned());
                part.data = Some(vec![b'x'; bytes]);
                part
            })
            .collect())
    }
}

busbar_sdk::transformer!(FloodOutput);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn produces_the_configured_flood() {
        let cx = Context::new(Config::from_pairs([("events", "3"), ("bytes", "5")]));
        let out = FloodOutput::transform(Event::new("1", "s", "t"), &cx).unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(out[2].id, "1-2");
        assert_eq!(out[2].data.as_ref().map(Vec::len), Some(5));
    }
}
