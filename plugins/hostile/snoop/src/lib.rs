//! A transformer that tries to see the host: it reads `/etc/passwd` (and a
//! configured `path`), lists `/` and the working directory, and reads the
//! environment and arguments, then returns everything it found as the data
//! of one event, so a host test can assert that it found nothing.
//!
//! Output data: `{"files": {path: contents or null}, "dirs": {path: [names]
//! or null}, "env": [[k, v], ...], "args": [...], "errors": [...]}`.

use busbar_sdk::prelude::*;
use busbar_sdk::serde_json;

/// Reports what it could read.
pub struct Snoop;

impl Transformer for Snoop {
    fn transform(event: Event, cx: &Context) -> Result<Vec<Event>, PluginError> {
        let mut errors = Vec::new();
        let mut files = serde_json::Map::new();
        let extra = cx.config().get("path").map(str::to_owned);
        for path in ["/etc/passwd".to_owned()].into_iter().chain(extra) {
            let found = match std::fs::read_to_string(&path) {
                Ok(text) => Value::from(text),
                Err(e) => {
                    errors.push(format!("read {path}: {e}"));
                    Value::Null
                }
            };
            files.insert(path, found);
        }
        let mut dirs = serde_json::Map::new();
        for path in ["/", "."] {
            let found = match std::fs::read_dir(path) {
                Ok(entries) => Value::from(
                    entries
                        .filter_map(Result::ok)
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect::<Vec<_>>(),
                ),
                Err(e) => {
                    errors.push(format!("list {path}: {e}"));
                    Value::Null
                }
            };
            dirs.insert(path.to_owned(), found);
        }
        let env: Vec<(String, String)> = std::env::vars().collect();
        let args: Vec<String> = std::env::args().collect();
        let report =
            json!({"files": files, "dirs": dirs, "env": env, "args": args, "errors": errors});
        let mut out = event.derive("snoop");
        out.set_json(&report)?;
        Ok(vec![out])
    }
}

busbar_sdk::transformer!(Snoop);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_what_a_native_process_can_see() {
        // Natively nothing is sandboxed: the report shows what the same code
        // could reach if the host gave the component any capability.
        let out = Snoop::transform(Event::new("1", "s", "t"), &Context::default()).unwrap();
        let report = out[0].json_value().unwrap();
        assert_eq!(out[0].id, "1-snoop");
        assert!(report["dirs"]["/"].is_array());
        assert!(report["env"].as_array().is_some_and(|env| !env.is_empty()));
        assert!(report["files"].get("/etc/passwd").is_some());
    }
}
