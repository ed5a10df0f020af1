//! Device loss and out-of-memory come back as typed errors, never as a panic, and a refused
//! call changes nothing.

use bloop::{BloopState, Config, EmaInits, EmaRole, Error, GpuContext, GradientPool, Kernels, Layout, Method};

#[test]
fn a_lost_device_gives_typed_errors_not_panics() {
    // A device of its own: losing it must not disturb other tests.
    let gpu = GpuContext::from_env().unwrap();
    let kernels = Kernels::new(&gpu.device);
    let layout = Layout::from_lengths(&[1000, 3]).unwrap();
    let mut state =
        BloopState::new(&kernels, &gpu.queue, &layout, Config::new(Method::Bloop), EmaInits::zeros()).unwrap();
    let pool = GradientPool::new(&gpu.device, &layout, false).unwrap();
    let bindings = state.bind_pool(&pool).unwrap();
    assert!(kernels.device_lost().is_none());

    gpu.device.destroy();
    gpu.device.poll(wgpu::PollType::Poll).unwrap();
    assert!(kernels.device_lost().is_some_and(|why| why.contains("Destroyed")), "{:?}", kernels.device_lost());
    let lost = |r: Result<(), Error>| matches!(r, Err(Error::DeviceLost(_)));
    assert!(lost(
        BloopState::new(&kernels, &gpu.queue, &layout, Config::new(Method::PcGrad), EmaInits::zeros()).map(drop)
    ));
    assert!(lost(state.bind_pool(&pool).map(drop)));
    assert!(lost(state.read_ema(EmaRole::Main).map(drop)));
    assert!(lost(state.write_ema(EmaRole::Main, &[vec![0.0; 1000], vec![0.0; 3]])));
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    assert!(lost(state.record_step(&mut encoder, &bindings)));
    assert_eq!(state.steps(), 0, "a refused step is not counted");
    assert!(lost(state.checkpoint().map(drop)));
    // Reading a buffer of the lost device directly also answers an error, not a panic.
    let readback = bloop::read_leaves(&gpu.device, &gpu.queue, pool.main_leaves());
    assert!(readback.is_err(), "{readback:?}");
}

#[test]
fn out_of_memory_is_its_own_error() {
    let oom = wgpu::Error::OutOfMemory { source: Box::new(std::io::Error::other("no memory")) };
    let error = bloop::context::classify_for_tests("allocating a pool", oom);
    assert!(matches!(error, Error::OutOfMemory { during: "allocating a pool" }), "{error}");
    assert!(error.to_string().contains("out of memory"));
}
