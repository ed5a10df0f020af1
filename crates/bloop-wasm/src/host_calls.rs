//! The async host calls beyond the conformance runner's own (a diagnostics ring's flush, the
//! diagnostics and skipped-step reads, a checkpoint's round trip), checked on the host's
//! WebGPU against the f64 reference: natively the blocking forms run them through the tests.

use std::sync::Arc;

use bloop::conformance::F32_BOUND;
use bloop::reference::{relative_error, widen, ReferenceState};
use bloop::{
    read_leaves_async, BloopState, Checkpoint, Config, DiagnosticsRing, EmaInits, EmaRole, GpuContext, GradientPool,
    Kernels, Layout, LeafBuffer, Method,
};

const STEPS: u64 = 3;

/// Three BLOOP steps through the pool (leaves not multiples of 4), read back only through the
/// async forms; `Ok` describes what was checked, `Err` what differed.
pub(crate) async fn check(gpu: &GpuContext, kernels: &Arc<Kernels>) -> Result<String, String> {
    let e = |e: bloop::Error| e.to_string();
    let lengths = [37u64, 5, 301];
    let layout = Layout::from_lengths(&lengths).map_err(e)?;
    let config = Config::new(Method::Bloop).ema(0.1).lambda(0.5);
    let mut state = BloopState::new(kernels, &gpu.queue, &layout, config, EmaInits::zeros()).map_err(e)?;
    let pool = GradientPool::new(&gpu.device, &layout, false).map_err(e)?;
    let bindings = state.bind_pool(&pool).map_err(e)?;
    let zeros = lengths.iter().map(|&n| vec![0.0; n as usize]).collect();
    let mut reference = ReferenceState::new(config, zeros, Vec::new());
    let mut ring = DiagnosticsRing::new(&gpu.device, STEPS as usize);
    let mut direction = Vec::new();
    for step in 0..STEPS {
        let values = |salt: u64| -> Vec<Vec<f32>> {
            let value = |leaf: u64, i: u64| ((leaf * 7 + i * 13 + step * 5 + salt) % 17) as f32 / 17.0 - 0.5;
            lengths.iter().enumerate().map(|(leaf, &n)| (0..n).map(|i| value(leaf as u64, i)).collect()).collect()
        };
        let (main, aux) = (values(0), values(3));
        write(&gpu.queue, pool.main_leaves(), &main);
        write(&gpu.queue, pool.aux_leaves(), &aux);
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        state.record_step(&mut encoder, &bindings).map_err(e)?;
        if !ring.record(&mut encoder, &state).map_err(e)? {
            return Err(format!("the diagnostics ring had no free slot at step {step}"));
        }
        gpu.queue.submit([encoder.finish()]);
        direction = reference.step(&widen(&main), &widen(&aux));
    }
    let landed = ring.flush_async().await.map_err(e)?;
    let steps: Vec<u64> = landed.iter().map(|d| d.step).collect();
    if steps != (0..STEPS).collect::<Vec<_>>() {
        return Err(format!("the diagnostics ring returned steps {steps:?}"));
    }
    let last = state.read_diagnostics_async().await.map_err(e)?;
    if landed.last() != Some(&last) {
        return Err(format!("the ring's last step {:?} is not the state's {last:?}", landed.last()));
    }
    let skipped = state.skipped_steps_async().await.map_err(e)?;
    if skipped != 0 {
        return Err(format!("{skipped} steps skipped"));
    }
    let out = widen(&read_leaves_async(&gpu.device, &gpu.queue, pool.output_leaves()).await.map_err(e)?);
    let ema = widen(&state.read_ema_async(EmaRole::Main).await.map_err(e)?);
    let errors = [relative_error(&out, &direction), relative_error(&ema, &reference.main_ema)];
    if errors.iter().any(|x| x.is_nan() || *x > F32_BOUND) {
        return Err(format!("relative errors of direction and average {errors:?} exceed {F32_BOUND:e}"));
    }
    let checkpoint = state.checkpoint_async().await.map_err(e)?;
    let bytes = checkpoint.to_bytes().map_err(e)?;
    let restored =
        BloopState::from_checkpoint(kernels, &gpu.queue, &Checkpoint::from_bytes(&bytes).map_err(e)?).map_err(e)?;
    if restored.checkpoint_async().await.map_err(e)? != checkpoint {
        return Err("a state restored from its checkpoint's bytes differs".into());
    }
    Ok(format!(
        "{STEPS} steps; direction and average within {:.1e} of the reference; the ring's {} steps; \
         a {}-byte checkpoint restored bit for bit",
        errors[0].max(errors[1]),
        landed.len(),
        bytes.len()
    ))
}

/// Host values into leaves the library placed (whole words: f32).
fn write(queue: &wgpu::Queue, leaves: &[LeafBuffer], values: &[Vec<f32>]) {
    for (leaf, v) in leaves.iter().zip(values) {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        queue.write_buffer(&leaf.buffer, leaf.offset, &bytes);
    }
}
