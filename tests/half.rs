//! 16-bit storage: every golden case and random layouts with inputs rounded to the half type,
//! judged against the f64 reference on the rounded inputs with the documented bound per type,
//! through the pool, user buffers with leaves that start mid-word, and one buffer shared by
//! inputs and outputs; guards between leaves must never change. f16 runs both as `array<f16>`
//! and packed in u32 words.

mod common;

use std::path::PathBuf;

use bloop::conformance::{bound, load_cases, run_gpu_typed, Case, CaseConfig, CaseInit, CaseStep, GradientPath};
use bloop::rng::SplitMix64;
use bloop::{DType, ElementTypes, KernelOptions, Kernels, Method};

fn kernel_sets() -> Vec<(&'static str, std::sync::Arc<Kernels>)> {
    let device = &common::gpu().device;
    let packed = common::kernels_with_options(KernelOptions { native_f16: false, ..Default::default() });
    assert!(!packed.uses_native_f16());
    let mut sets = vec![("packed f16", packed)];
    let native = common::kernels_with_options(KernelOptions::default());
    // A device without SHADER_F16 (SwiftShader, GL on llvmpipe) runs the packed fallback only.
    let has_f16 = device.features().contains(wgpu::Features::SHADER_F16);
    assert_eq!(native.uses_native_f16(), has_f16, "f16 arrays exactly where the device has SHADER_F16");
    if !has_f16 {
        eprintln!("no SHADER_F16 on this device: f16 runs packed in u32 words only");
    }
    if native.uses_native_f16() {
        sets.push(("f16 arrays", native));
    }
    sets
}

fn storage_mixes() -> Vec<ElementTypes> {
    let mut mixes = Vec::new();
    for half in [DType::F16, DType::Bf16] {
        mixes.push(ElementTypes::gradients_and_output(half));
        mixes.push(ElementTypes::all(half));
        mixes.push(ElementTypes { gradients: half, output: DType::F32, ema: DType::F32 });
        mixes.push(ElementTypes { gradients: DType::F32, output: half, ema: DType::F32 });
    }
    mixes
}

fn check(kernels: &std::sync::Arc<Kernels>, case: &Case, types: ElementTypes, context: &str) {
    let paths = if types.output == types.gradients {
        vec![GradientPath::Pool, GradientPath::External, GradientPath::SharedBuffer]
    } else {
        vec![GradientPath::Pool, GradientPath::External]
    };
    for path in paths {
        let report = run_gpu_typed(kernels, &common::gpu().queue, case, path, types).unwrap();
        assert!(report.passes(bound(types)), "{context} {types:?} {path:?}: {report:?} (bound {})", bound(types));
    }
}

#[test]
fn golden_cases_in_half_precision() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let cases = load_cases(&[dir]).unwrap();
    for (name, kernels) in kernel_sets() {
        for types in storage_mixes() {
            for (path, case) in &cases {
                check(&kernels, case, types, &format!("{name} {}", path.display()));
            }
        }
    }
}

/// A case of random data (its expected values are unused: 16-bit runs are judged against the
/// reference).
fn random_case(seed: u64) -> Case {
    let mut rng = SplitMix64::new(seed);
    let count = 1 + common::below(&mut rng, 12) as usize;
    // Small and odd lengths, a leaf of 3 among them, so leaves start mid-word.
    let leaf_sizes: Vec<u64> = (0..count).map(|i| if i == 0 { 3 } else { 1 + common::below(&mut rng, 700) }).collect();
    let methods = ["bloop", "dynamic_barrier", "pcgrad", "mixed"];
    let method = methods[(seed % 4) as usize];
    let config = common::random_config(&mut rng, Method::from_name(method).unwrap());
    let normal = |rng: &mut SplitMix64, scale: f64| -> Vec<Vec<f64>> {
        leaf_sizes.iter().map(|&n| (0..n).map(|_| rng.next_normal() * scale).collect()).collect()
    };
    let init = CaseInit { main_ema: normal(&mut rng, 1.0), aux_ema: Some(normal(&mut rng, 1.0)), emas: None };
    let steps = (0..3)
        .map(|_| CaseStep {
            grad_main: normal(&mut rng, 2.0),
            grad_aux: normal(&mut rng, 0.5),
            direction: vec![],
            main_ema: vec![],
            aux_ema: None,
            grads: None,
            emas: None,
        })
        .collect();
    Case {
        name: format!("random {seed}"),
        method: method.into(),
        config: CaseConfig {
            ema: config.ema,
            lambda: config.lambda,
            eps: config.eps,
            rescale: config.rescale,
            ratio_only: config.ratio_only,
            order: Some(config.order.name().into()),
            lambdas: None,
        },
        leaf_sizes,
        init,
        steps,
    }
}

#[test]
fn random_layouts_in_half_precision() {
    for (name, kernels) in kernel_sets() {
        for (i, types) in storage_mixes().into_iter().enumerate() {
            for trial in 0..3 {
                let case = random_case(100 * i as u64 + trial);
                check(&kernels, &case, types, &format!("{name} {} {:?}", case.name, case.leaf_sizes));
            }
        }
    }
}

#[test]
fn a_wrong_half_bound_is_caught() {
    // The bound must be able to fail: bf16 storage judged by the f16 bound.
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let (_, case) = load_cases(&[dir]).unwrap().into_iter().find(|(_, c)| c.name == "bloop_odd_leaves").unwrap();
    let types = ElementTypes::all(DType::Bf16);
    let report = run_gpu_typed(&common::kernels(), &common::gpu().queue, &case, GradientPath::Pool, types).unwrap();
    assert!(!report.passes(bound(ElementTypes::all(DType::F16))), "{report:?}");
    assert!(report.passes(bound(types)));
}

#[test]
fn half_types_are_validated() {
    use bloop::{Config, EmaInits, Error, GradientPool, Layout, LeafBuffer, Output};
    let gpu = common::gpu();
    let layout = Layout::from_lengths(&[3, 4]).unwrap();
    let f16 = Config::new(Method::Bloop).types(ElementTypes::gradients_and_output(DType::F16));
    // Averages in a third type are refused.
    let odd =
        Config::new(Method::Bloop).types(ElementTypes { gradients: DType::F16, output: DType::F16, ema: DType::Bf16 });
    let err = bloop::BloopState::new(&common::kernels(), &gpu.queue, &layout, odd, EmaInits::zeros()).unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { field: "types.ema", .. }), "{err}");
    let state = bloop::BloopState::new(&common::kernels(), &gpu.queue, &layout, f16, EmaInits::zeros()).unwrap();
    // f32 leaves where f16 is configured.
    let pool32 = GradientPool::new(&gpu.device, &layout, false).unwrap();
    assert!(matches!(state.bind_pool(&pool32), Err(Error::WrongType { expected: DType::F16, got: DType::F32, .. })));
    // A 16-bit leaf at an odd byte offset, and one whose last word leaves the buffer.
    let buffer = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 16,
        usage: bloop::pool::POOL_USAGE,
        mapped_at_creation: false,
    });
    let leaf = |offset, len| LeafBuffer::typed(&buffer, offset, len, DType::F16);
    let aux = [leaf(0, 3), leaf(6, 4)];
    let main = [leaf(1, 3), leaf(6, 4)];
    let err =
        state.bind_external(&bloop::ExternalGradients { main: &main, aux: &aux, output: Output::InPlace }).unwrap_err();
    assert!(matches!(err, Error::MisalignedOffset { alignment: 2, .. }), "{err}");
    let past = [leaf(0, 3), leaf(10, 4)]; // bytes 10..18 of 16
    let err =
        state.bind_external(&bloop::ExternalGradients { main: &past, aux: &aux, output: Output::InPlace }).unwrap_err();
    assert!(matches!(err, Error::OutOfRange { .. }), "{err}");
    // In place needs the output in the gradients' type.
    let mixed =
        Config::new(Method::Bloop).types(ElementTypes { gradients: DType::F16, output: DType::F32, ema: DType::F32 });
    let state = bloop::BloopState::new(&common::kernels(), &gpu.queue, &layout, mixed, EmaInits::zeros()).unwrap();
    let ok = [leaf(0, 3), leaf(6, 4)];
    let err =
        state.bind_external(&bloop::ExternalGradients { main: &ok, aux: &ok, output: Output::InPlace }).unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { field: "types.output", .. }), "{err}");
}
