//! Pattern-matching benchmarks: one ~1 KB event against rule sets of 10, 1,000 and
//! 10,000 mixed-operator rules, with JSON parsing included (`matches_json`) and
//! excluded (`matches` on a parsed `Value`), plus 1,000 exact/prefix rules with parsing
//! included, plus the same rule counts of a decoy-heavy set (`decoys`): rules that
//! only test `anything-but` or `wildcard` (no exact field to anchor them on) next to
//! exact, prefix and numeric ones — the workload whose 10,000-rule case must cost at
//! most 3x the 10-rule one.
//!
//! Run: `cargo bench -p busbar --bench pattern -- --warm-up-time 1 --measurement-time 3`
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use busbar::pattern::{Pattern, RuleSet};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Value, json};
use std::hint::black_box;

/// An order event of about 1 KB.
fn event() -> Value {
    json!({
        "version": "0",
        "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
        "detail-type": "Order Placed",
        "source": "shop.orders",
        "account": "111122223333",
        "time": "2026-11-22T07:30:00Z",
        "region": "eu-west-1",
        "resources": ["arn:aws:shop:eu-west-1:111122223333:order/o-12345"],
        "detail": {
            "order_id": "o-12345",
            "status": "paid",
            "total": 142.5,
            "currency": "EUR",
            "customer": {"id": "c-778", "tier": "gold", "email": "alice@example.com", "country": "DE"},
            "items": [
                {"sku": "sku-1", "qty": 2, "price": 20.0, "title": "USB-C cable, 2 m, braided"},
                {"sku": "sku-7", "qty": 1, "price": 102.5, "title": "Mechanical keyboard, ISO-DE layout"}
            ],
            "shipping": {"method": "express", "carrier": "dhl", "address": {"city": "Berlin", "zip": "10115", "street": "Invalidenstrasse 116"}},
            "payment": {"method": "card", "brand": "visa", "last4": "4242", "3ds": true},
            "client_ip": "10.1.2.3",
            "tags": ["new-customer", "promo-autumn", "newsletter"],
            "notes": "Please leave the parcel with the neighbours if nobody is at home. Thank you very much!"
        }
    })
}

/// Rule `i` of the mixed set: ten operator kinds in turn. `hit` picks values the
/// benchmark event matches; otherwise the values are unique per rule and miss.
fn mixed_rule(i: usize, hit: bool) -> Value {
    let tag = |matching: &str| {
        if hit {
            matching.to_owned()
        } else {
            format!("{matching}-{i}")
        }
    };
    match i % 10 {
        0 => json!({"source": [tag("shop.orders")], "detail": {"status": ["paid", "shipped"]}}),
        1 => json!({"detail": {"customer": {"id": [tag("c-778")]}}}),
        2 => {
            json!({"detail-type": [{"prefix": if hit { "Order ".to_owned() } else { format!("Order {i} ") }}]})
        }
        3 => {
            json!({"detail": {"customer": {"email": [{"suffix": if hit { "@example.com".to_owned() } else { format!("@d{i}.example") }}]}}})
        }
        4 => {
            json!({"detail": {"currency": [{"equals-ignore-case": if hit { "eur".to_owned() } else { format!("c{i}") }}]}})
        }
        5 => {
            let lo = if hit { 100 } else { 1000 + i };
            json!({"detail": {"total": [{"numeric": [">", lo, "<=", lo + 50]}]}})
        }
        6 => {
            json!({"detail": {"client_ip": [{"cidr": if hit { "10.1.0.0/16".to_owned() } else { format!("172.{}.{}.0/24", 16 + i % 16, i % 256) }}]}})
        }
        7 => json!({"detail": {"items": {"sku": [tag("sku-7")], "qty": [{"numeric": [">=", 1]}]}}}),
        8 => {
            json!({"region": [tag("eu-west-1")], "detail": {"status": [{"anything-but": ["cancelled", "refunded"]}]}})
        }
        _ => {
            json!({"account": [tag("111122223333")], "detail": {"shipping": {"method": [{"wildcard": "exp*s*"}]}}})
        }
    }
}

fn mixed_set(n: usize) -> RuleSet<usize> {
    let mut set = RuleSet::new();
    for i in 0..n {
        // A few rules match: the first three of every thousand.
        let p = mixed_rule(i, i % 1000 < 3);
        set.insert(i, Pattern::from_value(&p, &Default::default()).unwrap());
    }
    set
}

/// Rule `i` of the decoy-heavy set: of every ten rules, one exact, one prefix, one
/// numeric range, three `anything-but` and three `wildcard` rules with nothing else
/// to anchor them, and one exact + `anything-but`. `hit` picks values the benchmark
/// event matches; otherwise the rule misses it, most often because the event's value
/// is one the `anything-but` excludes or the wildcard's literal text differs.
fn decoy_rule(i: usize, hit: bool) -> Value {
    match (i % 10, hit) {
        (0, true) => json!({"source": ["shop.orders"]}),
        (0, false) => json!({"source": [format!("svc.{i}")]}),
        (1, true) => json!({"detail-type": [{"prefix": "Order"}]}),
        (1, false) => json!({"detail-type": [{"prefix": format!("Order {i}")}]}),
        (2, true) => json!({"detail": {"total": [{"numeric": [">", 100, "<", 200]}]}}),
        (2, false) => {
            json!({"detail": {"total": [{"numeric": [">", 1000 + i, "<=", 1050 + i]}]}})
        }
        (3, true) => json!({"detail": {"status": [{"anything-but": ["cancelled"]}]}}),
        (3, false) => {
            json!({"detail": {"status": [{"anything-but": ["paid", format!("s-{i}")]}]}})
        }
        (4, true) => json!({"detail": {"customer": {"tier": [{"anything-but": "bronze"}]}}}),
        (4, false) => {
            json!({"detail": {"customer": {"tier": [{"anything-but": {"prefix": "go"}}]}}})
        }
        (5, true) => json!({"detail": {"items": {"qty": [{"anything-but": [0]}]}}}),
        (5, false) => json!({"detail": {"total": [{"anything-but": [142.5, i]}]}}),
        (6, true) => json!({"detail": {"shipping": {"method": [{"wildcard": "exp*s*"}]}}}),
        (6, false) => {
            json!({"detail": {"shipping": {"method": [{"wildcard": format!("exp{i}*s")}]}}})
        }
        (7, true) => json!({"detail": {"customer": {"email": [{"wildcard": "*@example.com"}]}}}),
        (7, false) => {
            json!({"detail": {"customer": {"email": [{"wildcard": format!("*@d{i}.example")}]}}})
        }
        (8, true) => json!({"resources": [{"wildcard": "arn:aws:shop:*:order/*"}]}),
        (8, false) => {
            json!({"resources": [{"wildcard": format!("arn:aws:shop:eu-west-1:{i}:order/*")}]})
        }
        (_, true) => {
            json!({"region": ["eu-west-1"], "detail": {"currency": [{"anything-but": ["USD"]}]}})
        }
        (_, false) => {
            json!({"region": [format!("r-{i}")], "detail": {"currency": [{"anything-but": ["USD"]}]}})
        }
    }
}

fn decoy_set(n: usize) -> RuleSet<usize> {
    let mut set = RuleSet::new();
    for i in 0..n {
        // The first ten of the set match, one of each kind: the same 10 matches for
        // every size, so the sizes differ only in decoys.
        let p = decoy_rule(i, i < 10);
        set.insert(i, Pattern::from_value(&p, &Default::default()).unwrap());
    }
    set
}

fn exact_prefix_set(n: usize) -> RuleSet<usize> {
    let mut set = RuleSet::new();
    for i in 0..n {
        let hit = i % 500 < 2;
        let p = if i % 2 == 0 {
            let source = if hit {
                "shop.orders".to_owned()
            } else {
                format!("svc.{i}")
            };
            json!({"source": [source], "detail-type": ["Order Placed"]})
        } else {
            let prefix = if hit {
                "c-7".to_owned()
            } else {
                format!("c-{i}-")
            };
            json!({"detail": {"customer": {"id": [{"prefix": prefix}]}}})
        };
        set.insert(i, Pattern::from_value(&p, &Default::default()).unwrap());
    }
    set
}

fn bench(c: &mut Criterion) {
    let event = event();
    let bytes = serde_json::to_vec(&event).unwrap();
    assert!(
        (900..1300).contains(&bytes.len()),
        "event is {} bytes",
        bytes.len()
    );

    let mut group = c.benchmark_group("mixed");
    group.throughput(Throughput::Elements(1));
    for n in [10, 1_000, 10_000] {
        let set = mixed_set(n);
        let expected = set.matches(&event);
        assert!(!expected.is_empty());
        assert_eq!(set.matches_json(&bytes).unwrap().len(), expected.len());
        group.bench_function(format!("matches_json/{n}"), |b| {
            b.iter(|| set.matches_json(black_box(&bytes)).unwrap())
        });
        group.bench_function(format!("matches_value/{n}"), |b| {
            b.iter(|| set.matches(black_box(&event)))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("decoys");
    group.throughput(Throughput::Elements(1));
    for n in [10, 1_000, 10_000] {
        let set = decoy_set(n);
        let mut matched = set.matches_json(&bytes).unwrap();
        matched.sort_unstable();
        assert_eq!(matched, (0..10).collect::<Vec<_>>());
        group.bench_function(format!("matches_json/{n}"), |b| {
            b.iter(|| set.matches_json(black_box(&bytes)).unwrap())
        });
    }
    group.finish();

    let mut group = c.benchmark_group("exact_prefix");
    group.throughput(Throughput::Elements(1));
    let set = exact_prefix_set(1_000);
    assert_eq!(set.matches_json(&bytes).unwrap().len(), 4);
    group.bench_function("matches_json/1000", |b| {
        b.iter(|| set.matches_json(black_box(&bytes)).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
