//! A form post: the Content-Type line, then the body (urlencoded, multipart,
//! JSON), through parse_body, map_fields and contact normalization.
//! The checks are in fuzz/targets (shared with the property tests).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    leadgate_fuzz_targets::form_body(data);
});
