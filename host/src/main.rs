//! The `busbar` command line.

use clap::Parser;

fn main() {
    let cli = busbar::cli::Cli::parse();
    match busbar::cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    }
}
