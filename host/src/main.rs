//! The `busbar` command line.

fn main() {
    println!("busbar {}", env!("CARGO_PKG_VERSION"));
}
