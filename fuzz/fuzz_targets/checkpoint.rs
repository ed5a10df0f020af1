#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| bloop::fuzzing::checkpoint_bytes(data));
