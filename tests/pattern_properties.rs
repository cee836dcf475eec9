//! Property tests for event patterns: no input makes parsing or matching panic, and a
//! `RuleSet` always agrees with `Pattern::matches`.

use busbar::pattern::{Pattern, PatternLimits, RuleSet};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// Any JSON value, biased toward pattern-like shapes (operator names as keys).
fn any_json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        "[a-c$]{0,3}",
        Just("prefix".to_owned()),
        Just("numeric".to_owned()),
        Just("anything-but".to_owned()),
        Just("wildcard".to_owned()),
        Just("$or".to_owned()),
        Just("exists".to_owned()),
        Just("cidr".to_owned()),
        Just("equals-ignore-case".to_owned()),
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "[a-c*\\\\<>=./0-9 ]{0,6}".prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..5)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn string_value() -> impl Strategy<Value = Value> {
    prop::sample::select(vec![
        "", "a", "ab", "aB", "b", "A", "10.0.0.1", "::1", "a*b",
    ])
    .prop_map(|s| json!(s))
}

fn number_value() -> impl Strategy<Value = Value> {
    prop::sample::select(vec![-1.0, 0.0, 1.0, 2.5, 3.0, 100.0]).prop_map(|n| json!(n))
}

/// One alternative of a leaf's value list, over a small vocabulary so matches happen.
fn condition() -> impl Strategy<Value = Value> {
    let s = || prop::sample::select(vec!["", "a", "ab", "A", "b"]);
    prop_oneof![
        string_value(),
        number_value(),
        Just(json!(true)),
        Just(json!(null)),
        s().prop_map(|p| json!({"prefix": p})),
        s().prop_map(|p| json!({"suffix": p})),
        s().prop_map(|p| json!({"equals-ignore-case": p})),
        s().prop_map(|p| json!({"prefix": {"equals-ignore-case": p}})),
        s().prop_map(|p| json!({"suffix": {"equals-ignore-case": p}})),
        prop::sample::select(vec!["a*", "*b", "*", "a*b", "\\**"])
            .prop_map(|w| json!({"wildcard": w})),
        (
            prop::sample::select(vec![">", ">=", "<", "<=", "="]),
            -2i32..4
        )
            .prop_map(|(op, n)| json!({"numeric": [op, n]})),
        (-2i32..3, 1i32..4).prop_map(|(lo, w)| json!({"numeric": [">=", lo, "<", lo + w]})),
        any::<bool>().prop_map(|b| json!({"exists": b})),
        s().prop_map(|v| json!({"anything-but": v})),
        Just(json!({"anything-but": [1, 3]})),
        s().prop_map(|v| json!({"anything-but": {"prefix": v}})),
        Just(json!({"anything-but": {"wildcard": "a*"}})),
        Just(json!({"anything-but": {"equals-ignore-case": ["A", "b"]}})),
        prop::sample::select(vec!["10.0.0.0/8", "::/0"]).prop_map(|c| json!({"cidr": c})),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop::collection::vec(condition(), 1..3).prop_map(Value::Array)
}

/// A pattern over fields `a`, `b`, `c` with nested `x`, `y`, and `$or`.
fn pattern() -> impl Strategy<Value = Value> {
    let inner = prop::collection::btree_map(prop::sample::select(vec!["x", "y"]), leaf(), 1..3)
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()));
    let field = prop_oneof![3 => leaf(), 1 => inner];
    let object =
        prop::collection::btree_map(prop::sample::select(vec!["a", "b", "c"]), field, 1..3)
            .prop_map(|m| {
                m.into_iter()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect::<Map<_, _>>()
            });
    (
        object.clone(),
        prop::option::weighted(0.3, (object.clone(), object)),
    )
        .prop_map(|(mut base, or)| {
            if let Some((x, y)) = or {
                base.insert("$or".into(), json!([x, y]));
            }
            Value::Object(base)
        })
}

/// An event over the same vocabulary, with arrays and arrays of objects.
fn event() -> impl Strategy<Value = Value> {
    let scalar = prop_oneof![
        string_value(),
        number_value(),
        Just(json!(false)),
        Just(json!(null))
    ];
    let value = scalar.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map(prop::sample::select(vec!["x", "y"]), inner, 0..3)
                .prop_map(|m| Value::Object(
                    m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
                )),
        ]
    });
    prop::collection::btree_map(
        prop::sample::select(vec!["a", "b", "c", "a.x"]),
        value,
        0..4,
    )
    .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
}

fn limits() -> PatternLimits {
    PatternLimits {
        max_chars: 1 << 20,
        max_complexity: 1000,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parsing_any_json_never_panics(value in any_json()) {
        let _ = Pattern::from_value(&value, &limits());
        let _ = Pattern::parse(&value.to_string());
    }

    #[test]
    fn parsing_any_text_never_panics(text in "\\PC{0,64}") {
        let _ = Pattern::parse(&text);
    }

    #[test]
    fn matching_any_event_never_panics(p in pattern(), e in any_json()) {
        if let Ok(p) = Pattern::from_value(&p, &limits()) {
            let _ = p.matches(&e);
            let mut set = RuleSet::new();
            set.insert(0, p);
            let _ = set.matches(&e);
            let _ = set.matches_json(e.to_string().as_bytes());
        }
    }

    #[test]
    fn matches_json_rejects_bad_json_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let mut set = RuleSet::new();
        set.insert(0, Pattern::parse(r#"{"a": [{"exists": false}]}"#).unwrap());
        let _ = set.matches_json(&bytes);
    }

    #[test]
    fn rule_set_agrees_with_pattern(
        patterns in prop::collection::vec(pattern(), 1..12),
        events in prop::collection::vec(event(), 1..6),
    ) {
        let compiled: Vec<(usize, Pattern)> = patterns
            .iter()
            .enumerate()
            .filter_map(|(i, p)| Pattern::from_value(p, &limits()).ok().map(|p| (i, p)))
            .collect();
        let mut set = RuleSet::new();
        for (i, p) in &compiled {
            set.insert(*i, p.clone());
        }
        for e in &events {
            let want: Vec<usize> = compiled.iter().filter(|(_, p)| p.matches(e)).map(|(i, _)| *i).collect();
            let mut got = set.matches(e);
            got.sort_unstable();
            prop_assert_eq!(&got, &want, "event {}", e);
            let mut got_json = set.matches_json(e.to_string().as_bytes()).unwrap();
            got_json.sort_unstable();
            prop_assert_eq!(&got_json, &want, "event {} (json)", e);
        }
    }
}
