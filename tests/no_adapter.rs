//! Without a matching adapter the library says how to get one instead of panicking. (Its own
//! test binary: it changes the process environment.)

#[test]
fn missing_adapter_error_explains_how_to_get_one() {
    std::env::set_var("WGPU_ADAPTER_NAME", "no adapter has this name 7f3a");
    let error = bloop::GpuContext::from_env().unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, bloop::Error::NoAdapter { .. }), "{message}");
    assert!(message.contains("WGPU_ADAPTER_NAME") && message.contains("mesa-vulkan-drivers"), "{message}");
}
