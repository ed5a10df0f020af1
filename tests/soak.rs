//! Binding, dropping and stepping leave nothing behind on the device: wgpu's own counters of
//! live buffers, bind groups and pipelines come back to where they started.

mod common;

use bloop::{BloopState, Config, EmaInits, GradientPool, Layout, Method};
use common::{gpu, kernels};

/// Live objects of each kind wgpu's Vulkan layer (wgpu-hal) holds for the device. Command
/// encoders are left out: wgpu recycles them in a pool as large as the submissions in flight.
fn live_objects() -> [(&'static str, isize); 5] {
    let hal = gpu().device.get_internal_counters().hal;
    [
        ("buffers", hal.buffers.read()),
        ("bind groups", hal.bind_groups.read()),
        ("bind group layouts", hal.bind_group_layouts.read()),
        ("compute pipelines", hal.compute_pipelines.read()),
        ("pipeline layouts", hal.pipeline_layouts.read()),
    ]
}

/// Lets wgpu free what the GPU no longer uses. Binding writes its tile table through the queue,
/// and wgpu keeps such writes (and their buffers) until the next submission, so submit one.
fn settle() {
    gpu().queue.submit([]);
    gpu().device.poll(wgpu::PollType::wait_indefinitely()).expect("the device answers");
}

#[test]
fn binding_dropping_and_stepping_leave_no_live_objects_behind() {
    let kernels = kernels();
    let layout = Layout::from_lengths(&[1000, 7, 300, 1]).unwrap();
    let config = Config::new(Method::PcGrad);
    let mut state = BloopState::new(&kernels, &gpu().queue, &layout, config, EmaInits::zeros()).unwrap();
    let pool = GradientPool::new(&gpu().device, &layout, false).unwrap();
    // Warm up: the first binding compiles the variant's pipelines, which the kernel set keeps.
    let bindings = state.bind_pool(&pool).unwrap();
    let mut encoder = gpu().device.create_command_encoder(&Default::default());
    state.record_step(&mut encoder, &bindings).unwrap();
    gpu().queue.submit([encoder.finish()]);
    drop(bindings);
    settle();
    let before = live_objects();
    assert!(before[0].1 > 0 && before[3].1 > 0, "wgpu counts nothing (is its `counters` feature on?): {before:?}");

    for _ in 0..1000 {
        drop(state.bind_pool(&pool).unwrap());
    }
    settle();
    assert_eq!(live_objects(), before, "after binding and dropping 1000 times");

    let bindings = state.bind_pool(&pool).unwrap();
    for _ in 0..100 {
        let mut encoder = gpu().device.create_command_encoder(&Default::default());
        for _ in 0..100 {
            state.record_step(&mut encoder, &bindings).unwrap();
        }
        gpu().queue.submit([encoder.finish()]);
    }
    settle();
    assert_eq!(state.steps(), 10_001);
    drop(bindings);
    settle();
    assert_eq!(live_objects(), before, "after 10,000 steps");
}
