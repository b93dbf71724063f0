//! `jobctl`: see the library crate for everything it does.

use std::process::ExitCode;

fn main() -> ExitCode {
    ExitCode::from(jobctl::main_with_args(std::env::args_os()))
}
