//! Upload validation: a plugin must be a WebAssembly component (not a core
//! module), under the size limit, export exactly one of Busbar's plugin
//! interfaces (which tells its kind) and import nothing beyond its world
//! (plus the WASI p2 interfaces toolchains always import; only connectors get
//! `wasi:http`).

use serde::Serialize;
use wasmtime::Engine;
use wasmtime::component::Component;

use super::PluginKind;

/// Why an upload or a load was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginErrorCode {
    /// Larger than [`super::RuntimeConfig::max_upload_bytes`].
    TooLarge,
    /// Not WebAssembly, or a core module rather than a component.
    NotAComponent,
    /// Exports none of the plugin interfaces.
    UnknownWorld,
    /// Exports more than one plugin interface.
    AmbiguousWorld,
    /// Imports something its world does not offer (e.g. `wasi:http` in a
    /// filter).
    ForbiddenImport,
    /// Imports or exports a plugin interface with incompatible types (e.g.
    /// built against another version of the WIT).
    IncompatibleWorld,
    /// Invalid WebAssembly, or Cranelift failed.
    CompileFailed,
    /// No plugin stored under that digest.
    NotFound,
    /// The stored plugin is of another kind than the one asked for.
    WrongKind,
    /// Storage or other host failure.
    Internal,
}

impl PluginErrorCode {
    /// The code as serialised (`snake_case`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::NotAComponent => "not_a_component",
            Self::UnknownWorld => "unknown_world",
            Self::AmbiguousWorld => "ambiguous_world",
            Self::ForbiddenImport => "forbidden_import",
            Self::IncompatibleWorld => "incompatible_world",
            Self::CompileFailed => "compile_failed",
            Self::NotFound => "not_found",
            Self::WrongKind => "wrong_kind",
            Self::Internal => "internal",
        }
    }
}

/// A refused upload or load, with a message for the user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{message}")]
pub struct PluginError {
    /// What kind of problem.
    pub code: PluginErrorCode,
    /// Human-readable detail, naming the offending import/export.
    pub message: String,
}

impl PluginError {
    /// A new error.
    pub fn new(code: PluginErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

const WASM_MAGIC: &[u8] = b"\0asm";
const CORE_VERSION: &[u8] = &[1, 0, 0, 0];

/// Cheap checks before compiling: size and binary header.
pub fn check_header(bytes: &[u8], max_bytes: usize) -> Result<(), PluginError> {
    if bytes.len() > max_bytes {
        return Err(PluginError::new(
            PluginErrorCode::TooLarge,
            format!(
                "the plugin is {} bytes; the limit is {max_bytes}",
                bytes.len()
            ),
        ));
    }
    if bytes.len() < 8 || &bytes[..4] != WASM_MAGIC {
        return Err(PluginError::new(
            PluginErrorCode::NotAComponent,
            "not a WebAssembly binary (no \\0asm header)",
        ));
    }
    if &bytes[4..8] == CORE_VERSION {
        return Err(PluginError::new(
            PluginErrorCode::NotAComponent,
            "this is a core WebAssembly module, not a component; build for \
             wasm32-wasip2 (or run `wasm-tools component new`)",
        ));
    }
    Ok(())
}

/// The interface a kind exports, without version.
fn export_of(kind: PluginKind) -> &'static str {
    match kind {
        PluginKind::Filter => "busbar:plugin/filter",
        PluginKind::Transformer => "busbar:plugin/transformer",
        PluginKind::Connector => "busbar:plugin/connector",
    }
}

/// An interface name without its `@version`.
fn unversioned(name: &str) -> &str {
    name.split_once('@').map_or(name, |(n, _)| n)
}

/// Interfaces (unversioned, or `package/` prefixes) a kind may import.
fn allowed_import(kind: PluginKind, name: &str) -> bool {
    const BASE: &[&str] = &[
        "busbar:plugin/types",
        "busbar:plugin/log",
        "busbar:plugin/config",
    ];
    // WASI p2 interfaces toolchains import, linked to an empty context (no
    // env, args, files; every socket address and name lookup refused).
    // Sockets are here because Rust's std imports them as soon as any code
    // touches `std::net`; they are unusable all the same.
    const WASI_BASE: &[&str] = &[
        "wasi:cli/",
        "wasi:io/",
        "wasi:clocks/",
        "wasi:random/",
        "wasi:filesystem/",
        "wasi:sockets/",
    ];
    const HTTP: &[&str] = &["wasi:http/types", "wasi:http/outgoing-handler"];
    let n = unversioned(name);
    BASE.contains(&n)
        || WASI_BASE.iter().any(|p| n.starts_with(p))
        || (kind == PluginKind::Connector && HTTP.contains(&n))
}

/// Tells the kind from the exports and checks the imports.
pub fn classify(engine: &Engine, component: &Component) -> Result<PluginKind, PluginError> {
    let ty = component.component_type();
    let exports: Vec<&str> = ty.exports(engine).map(|(name, _)| name).collect();
    let kinds: Vec<PluginKind> = [
        PluginKind::Filter,
        PluginKind::Transformer,
        PluginKind::Connector,
    ]
    .into_iter()
    .filter(|k| exports.iter().any(|e| unversioned(e) == export_of(*k)))
    .collect();
    let kind = match kinds[..] {
        [kind] => kind,
        [] => {
            return Err(PluginError::new(
                PluginErrorCode::UnknownWorld,
                format!(
                    "the component exports none of busbar:plugin/filter, \
                     busbar:plugin/transformer, busbar:plugin/connector (it exports: {})",
                    list(&exports)
                ),
            ));
        }
        _ => {
            return Err(PluginError::new(
                PluginErrorCode::AmbiguousWorld,
                format!(
                    "the component exports several plugin interfaces ({}); a plugin \
                     is exactly one of filter, transformer or connector",
                    kinds
                        .iter()
                        .map(|k| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    };
    let forbidden: Vec<&str> = ty
        .imports(engine)
        .map(|(name, _)| name)
        .filter(|name| !allowed_import(kind, name))
        .collect();
    if !forbidden.is_empty() {
        return Err(PluginError::new(
            PluginErrorCode::ForbiddenImport,
            format!(
                "a {} plugin may not import {}",
                kind.as_str(),
                list(&forbidden)
            ),
        ));
    }
    Ok(kind)
}

fn list(names: &[&str]) -> String {
    if names.is_empty() {
        "nothing".to_owned()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        let core = b"\0asm\x01\0\0\0";
        assert_eq!(
            check_header(core, 100).unwrap_err().code,
            PluginErrorCode::NotAComponent
        );
        assert_eq!(
            check_header(b"hello world", 100).unwrap_err().code,
            PluginErrorCode::NotAComponent
        );
        assert_eq!(
            check_header(&[0; 101], 100).unwrap_err().code,
            PluginErrorCode::TooLarge
        );
        check_header(b"\0asm\x0d\0\x01\0", 100).unwrap();
    }

    #[test]
    fn imports_by_kind() {
        assert!(allowed_import(
            PluginKind::Filter,
            "wasi:cli/environment@0.2.3"
        ));
        assert!(allowed_import(
            PluginKind::Filter,
            "busbar:plugin/log@0.1.0"
        ));
        assert!(!allowed_import(
            PluginKind::Filter,
            "wasi:http/outgoing-handler@0.2.12"
        ));
        assert!(!allowed_import(
            PluginKind::Transformer,
            "wasi:http/types@0.2.12"
        ));
        assert!(allowed_import(
            PluginKind::Connector,
            "wasi:http/outgoing-handler@0.2.12"
        ));
        assert!(allowed_import(PluginKind::Filter, "wasi:sockets/tcp@0.2.0"));
        assert!(!allowed_import(PluginKind::Filter, "evil:pkg/thing"));
    }
}
