//! The executor's TOML configuration file, merged with (empty) flags and resolved
//! against a fixed account database: exactly what `Config::load` does after reading
//! the file.
//!
//! Oracles: no panic; an accepted configuration never runs jobs as root or as an account
//! of the database, has every cap above zero, absolute paths, a memory ceiling of at
//! least 4 MiB, a default tmp size and deadline within their ceilings, and an id for
//! every job that may run at once.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use jobworker_executor::config::{Config, Flags};
use jobworker_executor::users::Db;
use libfuzzer_sys::fuzz_target;

fn db() -> &'static Db {
    static DB: OnceLock<Db> = OnceLock::new();
    DB.get_or_init(|| {
        Db::parse(
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n\
             jobworker-job:x:990:990::/:/bin/false\njobworker:x:991:991::/:/bin/false\n",
            "root:x:0:\nnogroup:x:65534:\njobworker-job:x:990:\njobworker:x:991:\n",
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let flags = Flags {
        allow_uid: vec![991],
        ..Flags::default()
    };
    match Config::from_text(Path::new("/etc/jobworker/executor.toml"), text, flags, db()) {
        Ok(c) => {
            assert!(c.job_ids.first > 0 && c.job_ids.first <= c.job_ids.last);
            for account in [0, 990, 991, 65534] {
                assert!(!(c.job_ids.first..=c.job_ids.last).contains(&account));
            }
            assert!(c.job_ids.count() >= c.max_running_jobs as u64);
            assert!(c.socket.is_absolute() && c.state_dir.is_absolute());
            assert!(c.max_running_jobs > 0 && c.max_connections > 0);
            assert!(c.max_output_bytes > 0 && c.max_finished_jobs > 0);
            assert!(c.defaults.tmp_bytes > 0 && c.defaults.tmp_bytes <= c.ceilings.tmp_bytes);
            assert!(c.defaults.timeout <= c.ceilings.timeout);
            assert!(c.ceilings.cpu_millis > 0 && c.ceilings.pids > 0);
            assert!(c.ceilings.memory_bytes >= 4 << 20);
            assert_ne!(c.ceilings.io_bps, Some(0));
            assert_ne!(c.ceilings.io_iops, Some(0));
            assert!(!c.allowed_uids.is_empty() || !c.allowed_gids.is_empty());
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
