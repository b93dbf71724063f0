//! Exec requests and specs (`jobworker_executor::ipc::exec`), as a job's init decodes
//! what arrives on its report socket and in an exec's spec pipe.
//!
//! Oracles: no panic; a request decodes only with the descriptors its kind carries and
//! encodes back to the same bytes; a spec decodes only within its size limit and
//! round-trips.
#![no_main]

use jobworker_executor::ipc::exec::{ExecRequest, ExecSpec, MAX_EXEC_SPEC_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for fds in 0..=4 {
        if let Ok(r) = ExecRequest::decode(data, fds) {
            assert_eq!(&r.encode()[..], data);
            assert_eq!(fds, if r.tty { 1 } else { 4 });
        }
    }
    if let Ok(spec) = ExecSpec::decode(data) {
        assert!(data.len() <= MAX_EXEC_SPEC_LEN);
        assert_eq!(ExecSpec::decode(&spec.encode()).expect("round trip"), spec);
    }
});
