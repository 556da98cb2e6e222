//! A raw mail message through leadgate_imap::parse_message and the pipeline's
//! normalize and classify steps.
//! The checks are in fuzz/targets (shared with the property tests).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    leadgate_fuzz_targets::email(data);
});
