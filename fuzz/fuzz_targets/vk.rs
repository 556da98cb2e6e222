//! A VK Callback body, long-poll or API answer through
//! leadgate_vk::parse_answer, parse_event and the pipeline's pure steps.
//! The checks are in fuzz/targets (shared with the property tests).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    leadgate_fuzz_targets::vk(data);
});
