//! A Telegram webhook body or getUpdates answer through
//! leadgate_telegram::parse_update and the pipeline's pure steps.
//! The checks are in fuzz/targets (shared with the property tests).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    leadgate_fuzz_targets::telegram(data);
});
