//! The exec status (`jobworker_executor::ipc::exec_status`), as the job init decodes what
//! the command's child wrote when it could not execute the command.
//!
//! Oracles: no panic; nothing means the command runs; a message is never longer than the
//! maximum, in characters.
#![no_main]

use jobworker_executor::ipc::exec_status::{self, MAX_EXEC_STATUS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match exec_status::decode(data) {
        None => assert!(data.is_empty()),
        Some(msg) => assert!(msg.chars().count() <= MAX_EXEC_STATUS),
    }
});
