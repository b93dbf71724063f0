//! The API server's TOML configuration file with (empty) flags: exactly what
//! `Config::load` does after reading the file.
//!
//! Oracles: no panic; an accepted configuration has every cap at least 1 and every
//! timeout within its documented range.
#![no_main]

use std::path::Path;
use std::time::Duration;

use jobworker_api::config::{Config, Flags};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_parts(
        Some(text),
        Path::new("/etc/jobworker/api.toml"),
        &Flags::default(),
    ) {
        Ok(c) => {
            assert!(c.max_connections >= 1 && c.max_streams >= 1);
            assert!(c.max_streams_per_connection >= 1);
            let hour = Duration::from_secs(3600);
            for t in [
                c.connect_timeout,
                c.request_timeout,
                c.stop_timeout,
                c.handshake_timeout,
            ] {
                assert!(t >= Duration::from_millis(1) && t <= hour);
            }
            assert!(c.health_interval >= Duration::from_millis(10));
            assert!(c.idle_timeout >= Duration::from_millis(100));
            for admin in &c.admins {
                jobworker_protocol::validate::owner(admin).expect("admins are valid owners");
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
