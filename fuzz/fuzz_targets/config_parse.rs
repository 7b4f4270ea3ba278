//! `Config::parse` on arbitrary YAML: errors, never panics.

#![no_main]

use fhirgate::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = Config::parse(text, "fuzz") {
        assert!(!config.issuers.is_empty());
        assert_ne!(config.listen, config.admin_listen);
    }
});
