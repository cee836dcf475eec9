//! Embeds the guest SDK (`plugins/sdk`: `Cargo.toml`, `src/**`, `wit/**`)
//! and the plugins workspace's `Cargo.lock` into the `busbar` binary, so that
//! `busbar plugin new` can give a new plugin crate the SDK of this very
//! version on a machine without the Busbar source (`host/src/cli/plugin/sdk.rs`).
//! Every file under those directories is listed, so a new SDK file cannot be
//! forgotten.

use std::error::Error;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn Error>> {
    let manifest_dir =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").ok_or("no CARGO_MANIFEST_DIR")?);
    let plugins = manifest_dir.join("../plugins").canonicalize()?;
    let sdk = plugins.join("sdk");
    let lock = plugins.join("Cargo.lock");

    let mut files = vec![sdk.join("Cargo.toml")];
    for dir in ["src", "wit"] {
        collect(&sdk.join(dir), &mut files)?;
    }
    files.sort();

    let mut out = String::from(
        "/// The SDK's files: path relative to the SDK's directory, contents.\n\
         pub(crate) static SDK_FILES: &[(&str, &[u8])] = &[\n",
    );
    for file in &files {
        let relative = file
            .strip_prefix(&sdk)?
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        writeln!(
            out,
            "    ({relative:?}, include_bytes!({:?})),",
            file.display().to_string()
        )?;
    }
    out.push_str("];\n\n");
    writeln!(
        out,
        "/// The plugins workspace's `Cargo.lock`: the versions the SDK is built and tested with.\n\
         pub(crate) static PLUGINS_LOCK: &[u8] = include_bytes!({:?});",
        lock.display().to_string()
    )?;
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").ok_or("no OUT_DIR")?);
    std::fs::write(out_dir.join("embedded_sdk.rs"), out)?;

    for path in [
        sdk.join("Cargo.toml"),
        sdk.join("src"),
        sdk.join("wit"),
        lock,
    ] {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    println!("cargo:rerun-if-changed=build.rs");
    Ok(())
}

/// Every file under `dir`, skipping hidden ones (editor and OS leftovers).
fn collect(dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), Box<dyn Error>> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            collect(&path, files)?;
        } else {
            files.push(path);
        }
    }
    Ok(())
}
