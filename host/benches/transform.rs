//! Rendering cost of an input transformer, the per-delivery hot path.
//!
//! Run: `cargo bench -p busbar --bench transform`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use busbar::transform::{RenderContext, TransformSpec};
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};

/// An EventBridge-shaped event of about 1 KB.
fn event() -> Value {
    let event = json!({
        "version": "0",
        "id": "7bf73129-1428-4cd3-a780-95db273d1602",
        "detail-type": "EC2 Instance State-change Notification",
        "source": "aws.ec2",
        "account": "123456789012",
        "time": "2015-11-11T21:29:54Z",
        "region": "us-east-1",
        "resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-abcd1111"],
        "detail": {
            "instance-id": "i-0123456789",
            "state": "RUNNING",
            "previous-state": "PENDING",
            "owner": {"team": "platform", "email": "platform@example.com", "cost-center": 4711},
            "tags": [
                {"key": "env", "value": "production"},
                {"key": "service", "value": "checkout"},
                {"key": "tier", "value": "web"}
            ],
            "metrics": {"cpu": 12.5, "memory": 2048, "disk": [120, 80, 33], "healthy": true},
            "launch": {
                "ami": "ami-0abcdef1234567890",
                "type": "m5.large",
                "zone": "us-east-1a",
                "subnet": "subnet-0bb1c79de3EXAMPLE",
                "security-groups": ["sg-0123456789abcdef0", "sg-0fedcba9876543210"]
            },
            "note": "Instance changed state after a scheduled maintenance window; no action needed. The previous state lasted for eleven minutes while the host was patched and rebooted."
        }
    });
    assert!(
        (900..1300).contains(&event.to_string().len()),
        "{}",
        event.to_string().len()
    );
    event
}

fn bench(c: &mut Criterion) {
    let event = event();
    let ctx = RenderContext {
        rule_name: "ec2-state",
        ingestion_time: "2015-11-11T21:29:56Z",
        rule_arn: "busbar:rule/default/ec2-state",
    };
    let spec: TransformSpec = serde_json::from_value(json!({
        "input_paths_map": {
            "instance": "$.detail.instance-id",
            "state": "$.detail.state",
            "team": "$.detail.owner.team",
            "tag": "$.detail.tags[1].value",
            "metrics": "$.detail.metrics"
        },
        "input_template": "{\"instance\": <instance>, \"message\": \"instance <instance> of <team> is <state>\", \"service\": <tag>, \"metrics\": <metrics>}"
    }))
    .unwrap();
    let transform = spec.compile().unwrap();

    let mut group = c.benchmark_group("transform");
    group.bench_function("render_5_vars_1kb_event", |b| {
        b.iter(|| transform.render(black_box(&event), &ctx).unwrap())
    });
    group.bench_function("compile_5_vars", |b| {
        b.iter(|| black_box(&spec).compile().unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
