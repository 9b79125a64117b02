//! Any path segment handed to the key parser: a key of 1..=256 bytes of UTF-8, or an error,
//! never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(segment) = std::str::from_utf8(data) {
        if let Ok(key) = sdht::node::parse_key(segment) {
            assert!(!key.is_empty() && key.len() <= 256);
        }
    }
});
