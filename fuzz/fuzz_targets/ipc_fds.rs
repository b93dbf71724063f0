//! The descriptors a clone request carries (`jobworker_executor::ipc::fds`): the first
//! input byte says whether the request names a cgroup, the second how many descriptors
//! came (stand-ins, so no descriptor is opened).
//!
//! Oracles: no panic; accepted exactly when the count fits the request; what is accepted
//! gives back the same descriptors in the same order; the init's placement names every
//! fixed number once, in order.
#![no_main]

use jobworker_executor::ipc::fds::{INIT_FDS, InitFds};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [cg, n, ..] = data else {
        return;
    };
    let into_cgroup = cg & 1 == 1;
    let v: Vec<u8> = (0..*n).collect();
    match InitFds::from_vec(v.clone(), into_cgroup) {
        Ok(fds) => {
            assert_eq!(v.len(), INIT_FDS + usize::from(into_cgroup));
            let numbers: Vec<i32> = fds.placement().iter().map(|(_, n)| *n).collect();
            assert_eq!(numbers, [0, 1, 2, 3, 4, 5]);
            assert_eq!(fds.into_vec(), v);
        }
        Err(_) => assert_ne!(v.len(), INIT_FDS + usize::from(into_cgroup)),
    }
});
