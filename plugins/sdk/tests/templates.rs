//! The `busbar plugin new` templates under `plugins/templates/` must build
//! and pass their own tests once their placeholders are filled in.

#![allow(clippy::unwrap_used)] // test code: a failure should panic with its cause

use std::path::{Path, PathBuf};
use std::process::Command;

fn render_dir(from: &Path, to: &Path, name: &str, sdk_path: &str) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            render_dir(&entry.path(), &target, name, sdk_path);
        } else {
            let text = std::fs::read_to_string(entry.path()).unwrap();
            let text = text
                .replace("{{name}}", name)
                .replace("{{sdk_path}}", sdk_path);
            assert!(
                !text.contains("{{"),
                "unfilled placeholder in {:?}",
                entry.path()
            );
            std::fs::write(target, text).unwrap();
        }
    }
}

#[test]
fn templates_build_and_pass_their_tests() {
    let sdk = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let templates = sdk.join("../templates");
    // Shared by the three templates and kept between runs: the SDK and its
    // dependencies compile once.
    let work = std::env::temp_dir().join("busbar-template-check");
    for kind in ["filter", "transformer", "connector"] {
        let dir = work.join(kind);
        let _ = std::fs::remove_dir_all(&dir);
        let name = format!("my-{kind}");
        render_dir(&templates.join(kind), &dir, &name, sdk.to_str().unwrap());
        let output = Command::new(env!("CARGO"))
            .args(["test", "--quiet", "--offline"])
            .current_dir(&dir)
            .env("CARGO_TARGET_DIR", work.join("target"))
            .env_remove("RUSTFLAGS")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "template {kind} failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
