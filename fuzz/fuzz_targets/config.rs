//! Configuration parsing and validation on arbitrary UTF-8. Must never panic.
//!
//! `parse` stats the files the config names; relative paths resolve under the current
//! directory ("fuzz.toml" has no parent) and normally do not exist, which is fine.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match idgate_config::parse(Path::new("fuzz.toml"), text) {
        Ok(cfg) => {
            // Every route points at an existing upstream.
            for r in &cfg.routes {
                assert!(r.upstream < cfg.upstreams.len(), "route {} -> {}", r.name, r.upstream);
            }
            let _ = format!("{cfg:?}");
        }
        Err(errs) => {
            assert!(!errs.0.is_empty(), "parse failed with no error");
            let _ = errs.to_string();
        }
    }
});
