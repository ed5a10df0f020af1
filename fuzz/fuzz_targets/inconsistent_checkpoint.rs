#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    bloop::fuzzing::inconsistent_checkpoint(data);
});
