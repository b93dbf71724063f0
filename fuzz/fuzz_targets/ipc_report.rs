//! The init's report (`jobworker_executor::ipc::report`), as the executor decodes what a
//! job's init wrote into its report pipe.
//!
//! Oracles: no panic; at most one message per three input bytes; messages that encode
//! whole (failures within the atomic-write size) decode back to themselves.
#![no_main]

use jobworker_executor::ipc::report::{self, Report};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let reports = report::decode(data);
    assert!(reports.len() <= data.len() / 3);
    for r in reports {
        if matches!(&r, Report::Failed(m) if m.len() > 3 * 1024) {
            continue;
        }
        let mut buf = Vec::new();
        report::write(&mut buf, &r).expect("writing to memory");
        assert_eq!(report::decode(&buf), vec![r]);
    }
});
