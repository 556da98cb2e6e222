//! A PBX request (channel, method, path, headers, body) through
//! leadgate_telephony::parse_webhook, signatures included.
//! The checks are in fuzz/targets (shared with the property tests).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    leadgate_fuzz_targets::telephony(data);
});
