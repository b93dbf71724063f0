//! jobctl's configuration file (`client.toml`), resolved with no flags and a fixed
//! environment: exactly what `settings::load` does after reading the file.
//!
//! Oracles: no panic; an accepted file gives a server with a usable name and port and
//! absolute certificate paths; and `jobctl context use`'s rewrite of an accepted file
//! reads back as the same file with only `current_context` changed.
#![no_main]

use std::ffi::OsString;
use std::path::Path;

use jobctl::settings::{self, Flags};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = |name: &str| (name == "HOME").then(|| OsString::from("/home/u"));
    let path = Path::new("/home/u/.config/jobworker/client.toml");
    if let Ok(config) = settings::Config::parse(path, text) {
        let rewritten = jobctl::context::set_current_context(text, "fuzz")
            .expect("toml_edit reads what toml accepted");
        let again = settings::Config::parse(path, &rewritten).expect("the rewrite parses");
        assert_eq!(again.current_context.as_deref(), Some("fuzz"));
        assert_eq!((&again.top, &again.contexts), (&config.top, &config.contexts));
    }
    match settings::resolve(&Flags::default(), &env, Some((path, text))) {
        Ok(s) => {
            assert!(s.server.value.port > 0);
            assert!(s.server.value.server_name().is_ok());
            for p in [&s.ca.value, &s.cert.value, &s.key.value] {
                assert!(p.is_absolute(), "{}", p.display());
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
