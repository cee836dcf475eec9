//! Why an invocation failed: a wasmtime error and the store's bookkeeping
//! turned into a [`FailureKind`] and a message for the event's trace.

use wasmtime::{Trap, WasmBacktrace};

use super::FailureKind;
use super::state::PluginState;

/// What wasmtime says when hostcall fuel runs out while it copies data out of
/// a guest. Its error type is private, so the message is what identifies it
/// (the tests below keep it honest across wasmtime upgrades).
const HOSTCALL_FUEL_EXHAUSTED: &str = "fuel allocated for hostcalls has been exhausted";

/// Tells why a call failed, from the limits' flags and the error.
pub(super) fn classify(e: &wasmtime::Error, state: &PluginState) -> (FailureKind, String) {
    if state.deadline_hit {
        return (FailureKind::Deadline, "CPU time limit exceeded".to_owned());
    }
    if state.limiter.exceeded {
        return (
            FailureKind::OutOfMemory,
            format!("memory limit exceeded: {}", chain(e)),
        );
    }
    if e.chain()
        .any(|c| c.to_string().contains(HOSTCALL_FUEL_EXHAUSTED))
    {
        // Copying stopped at the limit. An error raised inside a host call
        // unwinds through the guest and carries a wasm backtrace; the copy
        // of the export's result happens after the guest returned.
        let message = if e.downcast_ref::<WasmBacktrace>().is_some() {
            format!(
                "passed more than hostcall_bytes ({}) to one host call",
                state.hostcall_bytes
            )
        } else {
            format!(
                "returned more than the output limits allow (copying stopped after {} bytes)",
                state.result_bytes
            )
        };
        return (FailureKind::OutputLimit, message);
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel | Trap::Interrupt) => (
            FailureKind::Deadline,
            format!("fuel exhausted: {}", chain(e)),
        ),
        Some(Trap::StackOverflow) => (FailureKind::Trap, format!("stack overflow: {}", chain(e))),
        Some(trap) => (FailureKind::Trap, format!("{trap}: {}", chain(e))),
        None => (FailureKind::Trap, chain(e)),
    }
}

/// An error and its causes on one line.
pub(super) fn chain(e: &wasmtime::Error) -> String {
    let mut parts: Vec<String> = e.chain().map(|c| c.to_string()).collect();
    parts.dedup();
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::component::{Component, Linker};
    use wasmtime::{Config, Engine, Store};

    /// A component whose export returns a string of `len` bytes.
    fn returns_string(engine: &Engine) -> Component {
        let wat = r#"(component
            (core module $m
              (memory (export "memory") 1)
              (data (i32.const 16) "\20\00\00\00\00\10\00\00")
              (func (export "f") (result i32) i32.const 16)
              (func (export "realloc") (param i32 i32 i32 i32) (result i32) unreachable))
            (core instance $i (instantiate $m))
            (func (export "f") (result string)
              (canon lift (core func $i "f") (memory (core memory $i "memory"))
                (realloc (core func $i "realloc")))))"#;
        Component::new(engine, wat::parse_str(wat).unwrap()).unwrap()
    }

    #[test]
    fn wasmtime_still_names_exhausted_hostcall_fuel_as_expected() {
        let engine = Engine::new(&Config::new()).unwrap();
        let component = returns_string(&engine);
        let mut store = Store::new(&engine, ());
        let instance = Linker::new(&engine)
            .instantiate(&mut store, &component)
            .unwrap();
        let f = instance
            .get_typed_func::<(), (String,)>(&mut store, "f")
            .unwrap();
        // The string is 4096 bytes; 1024 bytes of fuel run out copying it.
        store.set_hostcall_fuel(1024);
        let e = f.call(&mut store, ()).unwrap_err();
        assert!(chain(&e).contains(HOSTCALL_FUEL_EXHAUSTED), "{}", chain(&e));
        // Copied after the guest returned: no wasm frames on the error.
        assert!(e.downcast_ref::<WasmBacktrace>().is_none());
        assert!(e.downcast_ref::<Trap>().is_none());
    }
}
