#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| maitred_fuzz::host_and_te(data));
