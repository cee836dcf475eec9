//! Explain agrees with the matcher on every case of the pattern conformance
//! table (`tests/data/patterns`): `match` in the explanation is exactly
//! `Pattern::matches`, every branch's verdict adds up to it, and a miss
//! always names a first failure.

use busbar::pattern::explain::explain;
use busbar::pattern::{Pattern, PatternLimits};
use serde_json::Value;
use std::path::PathBuf;

#[test]
fn explain_agrees_with_the_matcher_on_every_conformance_case() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/patterns");
    let mut checked = 0;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let limits = PatternLimits::default();
    for path in files {
        let cases: Vec<Value> =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for (i, case) in cases.iter().enumerate() {
            let (Some(event), Some(_)) = (case.get("event"), case.get("match")) else {
                continue;
            };
            let pattern = match (&case["pattern"], case.get("text").and_then(Value::as_bool)) {
                (Value::String(text), Some(true)) => serde_json::from_str(text).unwrap(),
                (p, _) => p.clone(),
            };
            let name = format!("{}[{i}]", path.display());
            let matcher = Pattern::from_value(&pattern, &limits)
                .unwrap()
                .matches(event);
            let e = explain(&pattern, event, &limits).unwrap_or_else(|err| panic!("{name}: {err}"));
            assert_eq!(
                e.matched, matcher,
                "{name}: explain disagrees with the matcher"
            );
            assert_eq!(e.branches.iter().any(|b| b.matched), matcher, "{name}");
            assert_eq!(e.first_failure.is_none(), matcher, "{name}");
            checked += 1;
        }
    }
    assert!(checked > 100, "only {checked} cases found");
}
