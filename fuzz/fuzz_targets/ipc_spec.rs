//! The init spec (`jobworker_executor::ipc::spec`), as the job init decodes it from its
//! spec pipe.
//!
//! Oracles: no panic; no allocation past the malloc limit for an input within the spec's
//! maximum; a decoded spec encodes and decodes to itself.
#![no_main]

use jobworker_executor::ipc::spec::InitSpec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(spec) = InitSpec::decode(data) {
        let again = InitSpec::decode(&spec.encode()).expect("an encoded spec decodes");
        assert_eq!(again, spec);
    }
});
