//! The exec status (`jobworker_executor::ipc::exec_status`), as the job init decodes what
//! a command's child wrote when it could not execute the command.
//!
//! Oracles: no panic; nothing means the command runs; a message is never longer than the
//! maximum, in bytes; what the child writes decodes to its kind and message.
#![no_main]

use jobworker_executor::ipc::exec_status::{self, MAX_EXEC_STATUS};
use jobworker_protocol::StartFailure;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match exec_status::decode(data) {
        None => assert!(data.is_empty()),
        Some(f) => assert!(f.message.len() <= 3 * MAX_EXEC_STATUS),
    }
    let what = String::from_utf8_lossy(data);
    let err = std::io::Error::from_raw_os_error(libc_enoent());
    let bytes = exec_status::encode(StartFailure::NotFound, &what, &err);
    assert!(bytes.len() <= MAX_EXEC_STATUS);
    let f = exec_status::decode(&bytes).expect("a status was written");
    assert_eq!(f.kind, StartFailure::NotFound);
});

fn libc_enoent() -> i32 {
    2
}
