//! The audit trail's verifier (`jobworker-executor audit verify`), on segments split
//! from the input at each 0xFF byte (which no UTF-8 line holds), numbered from 1.
//!
//! Oracles: no panic; an intact trail has as many records as lines, and verifies again
//! against its own head hash, but not against another.
#![no_main]

use jobworker_executor::audit::verify::{Segment, verify};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let segments: Vec<Segment<'_>> = data
        .split(|&b| b == 0xff)
        .enumerate()
        .map(|(i, bytes)| Segment {
            name: format!("audit-{:016}.jsonl", i + 1),
            number: i as u64 + 1,
            bytes,
        })
        .collect();
    if let Ok(summary) = verify(&segments, None) {
        let lines: usize = segments
            .iter()
            .map(|s| s.bytes.iter().filter(|&&b| b == b'\n').count())
            .sum();
        assert_eq!(summary.records, lines as u64);
        assert!(verify(&segments, Some(&summary.head)).is_ok());
        let mut other = summary.head;
        other[0] ^= 1;
        assert!(verify(&segments, Some(&other)).is_err());
    }
});
