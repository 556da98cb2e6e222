//! A configuration folder (main, channel, team, routing files separated by NUL)
//! through leadgate::config::load.
//! The checks are in fuzz/targets (shared with the property tests).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    leadgate_fuzz_targets::config(data);
});
