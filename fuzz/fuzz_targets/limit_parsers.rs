//! jobctl's parsers of sizes, CPU shares, counts, environment variables, devices and
//! server addresses, and the protocol's job id parser.
//!
//! Oracles: no panic; every accepted value is within the documented bounds; accepted
//! values print back to text that parses to the same value.
#![no_main]

use jobctl::parse;
use jobctl::settings::Server;
use jobworker_protocol::JobId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(bytes) = parse::size(text) {
        assert!(bytes >= 1);
        assert_eq!(parse::size(&bytes.to_string()), Ok(bytes));
    }
    if let Ok(bytes) = parse::memory(text) {
        assert!((1..=parse::MAX_MEMORY_BYTES).contains(&bytes));
    }
    if let Ok(bps) = parse::rate(text) {
        assert!(bps >= 1);
    }
    if let Ok(millis) = parse::cpu(text) {
        assert!((1..=parse::MAX_CPU_MILLIS).contains(&millis));
        let cores = format!("{}.{:03}", millis / 1000, millis % 1000);
        assert_eq!(parse::cpu(&cores), Ok(millis));
    }
    if let Ok(n) = parse::count(text) {
        assert!(n >= 1);
    }
    if let Ok(n) = parse::pids(text) {
        assert!((1..=parse::MAX_PIDS).contains(&n));
    }
    if let Ok((name, value)) = parse::env_var(text) {
        assert!(!name.is_empty() && name.len() <= parse::MAX_ENV_NAME);
        assert!(jobworker_protocol::validate::env_name_ok(&name));
        assert_eq!(
            parse::env_var(&format!("{name}={value}")),
            Ok((name, value))
        );
    }
    if let Ok(device) = parse::device(text) {
        assert!(device.starts_with("/dev/") && device.len() <= 128);
    }
    if let Ok(server) = text.parse::<Server>() {
        assert!(server.port > 0);
        assert!(server.server_name().is_ok());
        assert_eq!(server.to_string().parse::<Server>().as_ref(), Ok(&server));
    }
    if let Ok(id) = text.parse::<JobId>() {
        assert_eq!(id.to_string(), text);
    }
});
