#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rampart_fuzz::cache_control(data));
