//! A transformer whose output event lies about its data: the host must hold
//! plugin outputs to the validation ingested events get, where a body
//! declared as JSON that does not parse is refused.
//!
//! Config: `datacontenttype` (default `application/json`) and `data` (the
//! raw data, default `{not json`) of the one event it returns.

use busbar_sdk::prelude::*;

/// Returns the input event with the configured content type and data.
pub struct Mislabel;

impl Transformer for Mislabel {
    fn transform(mut event: Event, cx: &Context) -> Result<Vec<Event>, PluginError> {
        let config = cx.config();
        let content_type = config.get("datacontenttype").unwrap_or("application/json");
        event.datacontenttype = Some(content_type.to_owned());
        event.data = Some(
            config
                .get("data")
                .unwrap_or("{not json")
                .as_bytes()
                .to_vec(),
        );
        Ok(vec![event])
    }
}

busbar_sdk::transformer!(Mislabel);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_the_data_as_configured() {
        let out = Mislabel::transform(
            Event::new("1", "s", "t"),
            &Context::new(Config::from_pairs::<&str, &str>([])),
        )
        .unwrap();
        assert_eq!(out[0].datacontenttype.as_deref(), Some("application/json"));
        assert_eq!(out[0].data.as_deref(), Some(b"{not json".as_slice()));
    }
}
