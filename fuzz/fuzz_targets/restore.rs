#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    bloop::fuzzing::restore_checkpoint(data);
});
