//! The init's reports (`jobworker_executor::ipc::report`), as the executor decodes each
//! message a job's init sent on its report socket, with the number of descriptors that
//! came with it.
//!
//! Oracles: no panic; a report decoded is at most `MAX_REPORT_LEN` bytes and carries
//! exactly the descriptors its kind has; it encodes back to bytes that decode to
//! itself (its message cut to fit, if it was longer).
#![no_main]

use jobworker_executor::ipc::report::{MAX_REPORT_LEN, Report};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&fds, bytes)) = data.split_first() else {
        return;
    };
    let fds = usize::from(fds % 4);
    if let Ok(r) = Report::decode(bytes, fds) {
        assert!(bytes.len() <= MAX_REPORT_LEN);
        let again = r.encode();
        assert!(again.len() <= MAX_REPORT_LEN);
        let back = Report::decode(&again, fds).expect("an encoded report decodes");
        assert_eq!(back.encode(), again);
    }
});
