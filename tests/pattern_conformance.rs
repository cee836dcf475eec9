//! Table-driven conformance suite for EventBridge event patterns.
//!
//! Each file under `tests/data/patterns/` is a JSON array of cases, one feature per file.
//! A case cites the documented rule it checks and is either a match case
//! `{"rule", "pattern", "event", "match"}` or an error case
//! `{"rule", "pattern", "error", "path"}` (`"text": true` means `pattern` is raw pattern
//! text rather than JSON). Every case is checked with `Pattern::matches`, a one-pattern
//! `RuleSet` (`matches` and `matches_json`), a `RuleSet` of its file and one `RuleSet`
//! of every valid pattern in the suite, which must yield exactly the patterns whose
//! `Pattern::matches` is true.

use busbar::pattern::{Pattern, PatternLimits, RuleSet};
use serde_json::Value;
use std::path::PathBuf;

struct Case {
    file: String,
    index: usize,
    rule: String,
    pattern: Value,
    text: bool,
    event: Option<Value>,
    expect: Option<bool>,
    error: Option<String>,
    path: Option<String>,
}

impl Case {
    fn name(&self) -> String {
        format!("{}.json[{}] ({})", self.file, self.index, self.rule)
    }

    fn text(&self) -> String {
        match (&self.pattern, self.text) {
            (Value::String(s), true) => s.clone(),
            (other, _) => other.to_string(),
        }
    }
}

fn load() -> Vec<Case> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/patterns");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let mut cases = Vec::new();
    for path in files {
        let file = path.file_stem().unwrap().to_string_lossy().into_owned();
        let items: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for (index, item) in items.into_iter().enumerate() {
            let field = |k: &str| item.get(k).cloned();
            let case = Case {
                file: file.clone(),
                index,
                rule: item["rule"].as_str().expect("rule").to_owned(),
                pattern: field("pattern").expect("pattern"),
                text: item.get("text").and_then(Value::as_bool).unwrap_or(false),
                event: field("event"),
                expect: item.get("match").and_then(Value::as_bool),
                error: item.get("error").and_then(Value::as_str).map(str::to_owned),
                path: item.get("path").and_then(Value::as_str).map(str::to_owned),
            };
            assert!(
                case.error.is_some() == case.expect.is_none()
                    && case.event.is_some() == case.expect.is_some(),
                "{}: a case has either event+match or error+path",
                case.name()
            );
            cases.push(case);
        }
    }
    cases
}

/// Compiles a case's pattern from text and, unless it is raw text, from the value too;
/// both routes must agree.
fn compile(case: &Case) -> Result<Result<Pattern, busbar::pattern::PatternError>, String> {
    let from_text = Pattern::parse(&case.text());
    if case.text {
        return Ok(from_text);
    }
    let from_value = Pattern::from_value(&case.pattern, &PatternLimits::default());
    match (&from_text, &from_value) {
        (Ok(_), Ok(_)) => Ok(from_value),
        (Err(a), Err(b)) if a == b => Ok(from_value),
        _ => Err(format!(
            "parse and from_value disagree: {:?} vs {:?}",
            from_text.as_ref().err(),
            from_value.as_ref().err()
        )),
    }
}

fn sorted(mut v: Vec<usize>) -> Vec<usize> {
    v.sort_unstable();
    v
}

#[test]
fn conformance_suite() {
    let cases = load();
    assert!(cases.len() >= 300, "only {} cases", cases.len());
    let mut failures = Vec::new();
    let mut valid: Vec<(usize, Pattern)> = Vec::new();

    for (i, case) in cases.iter().enumerate() {
        let mut fail = |why: String| failures.push(format!("{}: {why}", case.name()));
        let compiled = match compile(case) {
            Ok(c) => c,
            Err(why) => {
                fail(why);
                continue;
            }
        };
        match (compiled, &case.error) {
            (Err(err), Some(want)) => {
                if !err.reason.to_lowercase().contains(&want.to_lowercase()) {
                    fail(format!("error {err} does not contain {want:?}"));
                }
                if Some(&err.path) != case.path.as_ref() {
                    fail(format!(
                        "error path {:?}, expected {:?}",
                        err.path, case.path
                    ));
                }
            }
            (Ok(_), Some(want)) => fail(format!("pattern accepted, expected error {want:?}")),
            (Err(err), None) => fail(format!("pattern rejected: {err}")),
            (Ok(pattern), None) => {
                let event = case.event.as_ref().unwrap();
                let expect = case.expect.unwrap();
                if pattern.matches(event) != expect {
                    fail(format!("Pattern::matches gave {}", !expect));
                }
                let mut one = RuleSet::new();
                one.insert(i, pattern.clone());
                let want = if expect { vec![i] } else { vec![] };
                if one.matches(event) != want {
                    fail(format!(
                        "one-pattern RuleSet::matches gave {:?}",
                        one.matches(event)
                    ));
                }
                let bytes = serde_json::to_vec(event).unwrap();
                match one.matches_json(&bytes) {
                    Ok(got) if got == want => {}
                    other => fail(format!("one-pattern RuleSet::matches_json gave {other:?}")),
                }
                valid.push((i, pattern));
            }
        }
    }

    // Many patterns at once: per file and the whole suite.
    let mut all = RuleSet::new();
    for (i, p) in &valid {
        all.insert(*i, p.clone());
    }
    assert_eq!(all.len(), valid.len());
    for (i, case) in cases.iter().enumerate() {
        let (Some(event), Some(expect)) = (&case.event, case.expect) else {
            continue;
        };
        let expected: Vec<usize> = valid
            .iter()
            .filter(|(_, p)| p.matches(event))
            .map(|(j, _)| *j)
            .collect();
        if expected.contains(&i) != expect {
            // Already reported above.
            continue;
        }
        let got = sorted(all.matches(event));
        if got != expected {
            failures.push(format!(
                "{}: suite RuleSet::matches gave {got:?}, Pattern::matches says {expected:?}",
                case.name()
            ));
        }
        let got_json = sorted(
            all.matches_json(&serde_json::to_vec(event).unwrap())
                .unwrap(),
        );
        if got_json != expected {
            failures.push(format!(
                "{}: suite RuleSet::matches_json gave {got_json:?}, expected {expected:?}",
                case.name()
            ));
        }
        let mut same_file = RuleSet::new();
        for (j, p) in valid.iter().filter(|(j, _)| cases[*j].file == case.file) {
            same_file.insert(*j, p.clone());
        }
        let file_expected: Vec<usize> = expected
            .iter()
            .copied()
            .filter(|j| cases[*j].file == case.file)
            .collect();
        let got_file = sorted(same_file.matches(event));
        if got_file != file_expected {
            failures.push(format!(
                "{}: file RuleSet gave {got_file:?}, expected {file_expected:?}",
                case.name()
            ));
        }
    }

    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
