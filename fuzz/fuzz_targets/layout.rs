#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| bloop::fuzzing::layout_bytes(data));
