//! The adapter against `bloop::reference` on a small burn MLP (lavapipe in CI).

use std::sync::{Arc, OnceLock};

use bloop::reference::{widen, ReferenceState};
use bloop::Kernels;
use bloop_burn::{BurnBloop, Config, EmaInit, EmaInits, Method, ParamLeaf};
use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::{Device, Distribution, Tensor};

struct Gpu {
    kernels: Arc<Kernels>,
    queue: wgpu::Queue,
    device: Device,
}

fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| {
        // burn's own device: cubecl compiles for every feature the adapter offers (u64, ...),
        // so a device shared with it needs them all; burn's setup has them.
        let (device, setup) = Device::wgpu_options().init_with_setup().expect("a wgpu adapter (lavapipe in CI)");
        Gpu { kernels: Kernels::new(&setup.device), queue: setup.queue.clone(), device }
    })
}

#[derive(Module, Debug)]
struct Mlp {
    l1: Linear,
    l2: Linear,
    l3: Linear,
}

impl Mlp {
    fn new(device: &Device) -> Mlp {
        Mlp {
            l1: LinearConfig::new(8, 16).init(device),
            l2: LinearConfig::new(16, 12).init(device),
            l3: LinearConfig::new(12, 4).init(device),
        }
    }

    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let x = burn::tensor::activation::relu(self.l1.forward(x));
        let x = burn::tensor::activation::relu(self.l2.forward(x));
        self.l3.forward(x)
    }

    /// Main loss: mean squared error to `y`.
    fn main_loss(&self, x: Tensor<2>, y: Tensor<2>) -> Tensor<1> {
        (self.forward(x) - y).powi_scalar(2).mean()
    }

    /// Aux loss: squared norms of the first two weights only, so `l1.bias`, `l2.bias` and all
    /// of `l3` get no aux gradient.
    fn aux_loss(&self) -> Tensor<1> {
        self.l1.weight.val().powi_scalar(2).sum() * 0.5 + self.l2.weight.val().powi_scalar(4).sum() * 0.25
    }
}

/// A weight used through `transpose()`: its gradient comes back non-contiguous.
#[derive(Module, Debug)]
struct Transposed {
    w: Param<Tensor<2>>,
    b: Param<Tensor<1>>,
}

impl Transposed {
    fn new(device: &Device) -> Transposed {
        Transposed {
            w: Param::from_tensor(Tensor::random([6, 10], Distribution::Normal(0.0, 0.3), device)),
            b: Param::from_tensor(Tensor::zeros([6], device)),
        }
    }

    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        x.matmul(self.w.val().transpose()) + self.b.val().unsqueeze()
    }
}

/// One gradient read back to the host (zeros where there is none).
fn read(grads: &GradientsParams, leaf: &ParamLeaf) -> Vec<f32> {
    let n: usize = leaf.shape.iter().product();
    let data = match leaf.shape.len() {
        1 => grads.get::<1>(leaf.id).map(|t| t.into_data()),
        2 => grads.get::<2>(leaf.id).map(|t| t.into_data()),
        _ => unreachable!(),
    };
    data.map(|d| d.try_into_vec_as::<f32>().unwrap()).unwrap_or_else(|| vec![0.0; n])
}

fn read_all(grads: &GradientsParams, leaves: &[ParamLeaf]) -> Vec<Vec<f32>> {
    leaves.iter().map(|l| read(grads, l)).collect()
}

fn max_abs_diff(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

fn max_abs(a: &[Vec<f64>]) -> f64 {
    a.iter().flatten().map(|x| x.abs()).fold(0.0, f64::max)
}

fn values<M: Module>(module: &M) -> Vec<Vec<f32>> {
    bloop_burn::param_values(module)
}

fn batch(device: &Device, step: usize) -> (Tensor<2>, Tensor<2>) {
    let _ = step;
    let x = Tensor::random([32, 8], Distribution::Normal(0.0, 1.0), device);
    let y = Tensor::random([32, 4], Distribution::Normal(0.0, 1.0), device);
    (x, y)
}

fn configs() -> Vec<Config> {
    vec![
        Config::new(Method::Bloop).ema(0.1).lambda(0.7),
        Config::new(Method::DynamicBarrier).ema(1.0).lambda(0.4),
        Config::new(Method::PcGrad).ema(0.5).lambda(0.3),
        Config::new(Method::Mixed).lambda(0.25),
        Config::new(Method::Bloop).ema(0.2).lambda(0.5).ratio_only(true).rescale(true),
    ]
}

/// The combined gradients equal the reference on the same gradients read back, over several
/// steps (the averages persist), for every method; params without aux gradient are zeros.
#[test]
fn combined_matches_reference_for_every_method() {
    let gpu = gpu();
    let device = gpu.device.clone().autodiff();
    for config in configs() {
        let model = Mlp::new(&device);
        let init = values(&model);
        let inits = EmaInits::both(EmaInit::Values(init.clone()));
        let mut bloop = BurnBloop::new(&model, config, &gpu.kernels, &gpu.queue, inits).unwrap();
        let leaves = bloop.leaves().to_vec();
        assert_eq!(
            leaves.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
            ["l1.weight", "l1.bias", "l2.weight", "l2.bias", "l3.weight", "l3.bias"]
        );
        let mut reference = ReferenceState::new(
            config,
            if config.method.has_main_ema() { widen(&init) } else { Vec::new() },
            if config.method.has_aux_ema() { widen(&init) } else { Vec::new() },
        );
        for step in 0..4 {
            let (x, y) = batch(&device, step);
            let main = GradientsParams::from_grads(model.main_loss(x, y).backward(), &model);
            let aux = GradientsParams::from_grads(model.aux_loss().backward(), &model);
            assert!(aux.len() < leaves.len(), "some params have no aux gradient");
            let (gm, ga) = (read_all(&main, &leaves), read_all(&aux, &leaves));
            let expected = reference.step(&widen(&gm), &widen(&ga));
            let combined = bloop.combine(main, aux).unwrap();
            let got = widen(&read_all(&combined, &leaves));
            let diff = max_abs_diff(&got, &expected);
            println!("{:?} step {step}: max |diff| {diff:.2e} (max |x| {:.2e})", config.method, max_abs(&expected));
            assert!(diff <= 1e-5 * max_abs(&expected).max(1.0), "{config:?} step {step}: {diff}");
        }
        let (hits, binds) = bloop.binding_stats();
        println!("{:?}: bindings reused {hits}, built {binds}", config.method);
    }
}

/// Tensors that are not gradients but live in burn's pooled buffers are untouched.
#[test]
fn unrelated_tensors_are_untouched() {
    let gpu = gpu();
    let device = gpu.device.clone().autodiff();
    let model = Mlp::new(&device);
    let config = Config::new(Method::Bloop).ema(0.5).lambda(1.0);
    let mut bloop = BurnBloop::new(&model, config, &gpu.kernels, &gpu.queue, EmaInits::zeros()).unwrap();
    let inner = gpu.device.clone();
    for step in 0..3 {
        let (x, y) = batch(&device, step);
        // Small tensors allocated around the gradients, in the same pools.
        let before = Tensor::<1>::random([37], Distribution::Normal(0.0, 1.0), &inner);
        let main = GradientsParams::from_grads(model.main_loss(x, y).backward(), &model);
        let between = Tensor::<2>::random([5, 7], Distribution::Normal(0.0, 1.0), &inner);
        let aux = GradientsParams::from_grads(model.aux_loss().backward(), &model);
        let after = Tensor::<1>::random([129], Distribution::Normal(0.0, 1.0), &inner);
        let snap = |t: &Tensor<1>| t.clone().into_data().try_into_vec_as::<f32>().unwrap();
        let (b0, m0, a0) = (snap(&before), between.clone().into_data().try_into_vec_as::<f32>().unwrap(), snap(&after));
        let params_before = values(&model);
        let _combined = bloop.combine(main, aux).unwrap();
        assert_eq!(snap(&before), b0);
        assert_eq!(between.clone().into_data().try_into_vec_as::<f32>().unwrap(), m0);
        assert_eq!(snap(&after), a0);
        assert_eq!(values(&model), params_before, "parameters are not gradients");
    }
}

/// A weight used through `transpose()` has a non-contiguous gradient; it is made contiguous.
#[test]
fn transposed_weight() {
    let gpu = gpu();
    let device = gpu.device.clone().autodiff();
    let model = Transposed::new(&device);
    let config = Config::new(Method::Bloop).ema(0.3).lambda(0.6);
    let mut bloop = BurnBloop::new(&model, config, &gpu.kernels, &gpu.queue, EmaInits::zeros()).unwrap();
    let leaves = bloop.leaves().to_vec();
    let mut reference = ReferenceState::new(config, vec![vec![0.0; 60], vec![0.0; 6]], Vec::new());
    for _ in 0..3 {
        let x = Tensor::<2>::random([16, 10], Distribution::Normal(0.0, 1.0), &device);
        let y = Tensor::<2>::random([16, 6], Distribution::Normal(0.0, 1.0), &device);
        let main = GradientsParams::from_grads((model.forward(x) - y).powi_scalar(2).mean().backward(), &model);
        let aux = GradientsParams::from_grads(model.w.val().transpose().powi_scalar(2).sum().backward(), &model);
        let (gm, ga) = (read_all(&main, &leaves), read_all(&aux, &leaves));
        let expected = reference.step(&widen(&gm), &widen(&ga));
        let got = widen(&read_all(&bloop.combine(main, aux).unwrap(), &leaves));
        let diff = max_abs_diff(&got, &expected);
        println!("transposed: max |diff| {diff:.2e}");
        assert!(diff <= 1e-5 * max_abs(&expected).max(1.0));
    }
}

/// Gradients that share storage: two parameters handed the same tensor, and a parameter whose
/// main and aux gradients are the same tensor. Copied before the in-place write.
#[test]
fn shared_gradient_storage() {
    let gpu = gpu();
    let device = gpu.device.clone();
    #[derive(Module, Debug)]
    struct Two {
        a: Param<Tensor<1>>,
        b: Param<Tensor<1>>,
        c: Param<Tensor<1>>,
    }
    let p = |n| Param::from_tensor(Tensor::<1>::zeros([n], &device));
    let model = Two { a: p(40), b: p(40), c: p(24) };
    let config = Config::new(Method::PcGrad).ema(0.5).lambda(0.8);
    let mut bloop = BurnBloop::new(&model, config, &gpu.kernels, &gpu.queue, EmaInits::zeros()).unwrap();
    let leaves = bloop.leaves().to_vec();
    let zeros: Vec<Vec<f64>> = leaves.iter().map(|l| vec![0.0; l.shape[0]]).collect();
    let mut reference = ReferenceState::new(config, zeros.clone(), zeros);
    for _ in 0..3 {
        let shared = Tensor::<1>::random([40], Distribution::Normal(0.0, 1.0), &device);
        let c = Tensor::<1>::random([24], Distribution::Normal(0.0, 1.0), &device);
        let mut main = GradientsParams::new();
        main.register(model.a.id, shared.clone());
        main.register(model.b.id, shared.clone());
        main.register(model.c.id, c.clone());
        let mut aux = GradientsParams::new();
        aux.register(model.a.id, Tensor::<1>::random([40], Distribution::Normal(0.0, 1.0), &device));
        aux.register(model.c.id, c);
        let (gm, ga) = (read_all(&main, &leaves), read_all(&aux, &leaves));
        let shared_before = shared.clone().into_data().try_into_vec_as::<f32>().unwrap();
        drop(shared);
        let expected = reference.step(&widen(&gm), &widen(&ga));
        let got = widen(&read_all(&bloop.combine(main, aux).unwrap(), &leaves));
        let diff = max_abs_diff(&got, &expected);
        println!("shared: max |diff| {diff:.2e}");
        assert!(diff <= 1e-5 * max_abs(&expected).max(1.0));
        assert_eq!(gm[0], shared_before);
    }
}

/// The adapter followed by burn's SGD takes the step the reference followed by SGD on the
/// host takes; the state checkpoints and reloads onto the same module.
#[test]
fn adapter_and_optimizer_match_reference_and_checkpoint_round_trips() {
    let gpu = gpu();
    let device = gpu.device.clone().autodiff();
    let mut model = Mlp::new(&device);
    let config = Config::new(Method::Bloop).ema(0.2).lambda(0.5);
    let mut bloop = BurnBloop::new(&model, config, &gpu.kernels, &gpu.queue, EmaInits::zeros()).unwrap();
    let leaves = bloop.leaves().to_vec();
    let zeros: Vec<Vec<f64>> = leaves.iter().map(|l| vec![0.0; l.shape.iter().product()]).collect();
    let mut reference = ReferenceState::new(config, zeros, Vec::new());
    let mut optimizer = SgdConfig::new().init();
    let lr = 0.05;
    for step in 0..4 {
        let (x, y) = batch(&device, step);
        let before = values(&model);
        let main = GradientsParams::from_grads(model.main_loss(x, y).backward(), &model);
        let aux = GradientsParams::from_grads(model.aux_loss().backward(), &model);
        let (gm, ga) = (read_all(&main, &leaves), read_all(&aux, &leaves));
        let direction = reference.step(&widen(&gm), &widen(&ga));
        let grads = bloop.combine(main, aux).unwrap();
        model = optimizer.step(lr, model, grads);
        let after = widen(&values(&model));
        let expected: Vec<Vec<f64>> = before
            .iter()
            .zip(&direction)
            .map(|(p, d)| p.iter().zip(d).map(|(&p, &d)| p as f64 - lr * d).collect())
            .collect();
        let diff = max_abs_diff(&after, &expected);
        println!("sgd step {step}: max |diff| {diff:.2e}");
        assert!(diff <= 1e-5 * max_abs(&expected).max(1.0));
    }

    // Checkpoint, then a fresh adapter on the same module continues exactly where this one is.
    let dir = std::env::temp_dir().join(format!("bloop-burn-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("state.safetensors");
    bloop.save_checkpoint(&path).unwrap();
    let mut reloaded = BurnBloop::new(&model, config, &gpu.kernels, &gpu.queue, EmaInits::zeros()).unwrap();
    reloaded.load_checkpoint(&path).unwrap();
    assert_eq!(reloaded.state().steps(), 4);
    assert_eq!(
        reloaded.state().read_ema(bloop::EmaRole::Main).unwrap(),
        bloop.state().read_ema(bloop::EmaRole::Main).unwrap()
    );
    let (x, y) = batch(&device, 9);
    let main = GradientsParams::from_grads(model.main_loss(x, y).backward(), &model);
    let aux = GradientsParams::from_grads(model.aux_loss().backward(), &model);
    let (gm, ga) = (read_all(&main, &leaves), read_all(&aux, &leaves));
    let expected = reference.step(&widen(&gm), &widen(&ga));
    let got = widen(&read_all(&reloaded.combine(main, aux).unwrap(), &leaves));
    assert!(max_abs_diff(&got, &expected) <= 1e-5 * max_abs(&expected).max(1.0));

    // A checkpoint of another module is refused with a typed error.
    let other = Transposed::new(&device);
    let mut wrong = BurnBloop::new(&other, config, &gpu.kernels, &gpu.queue, EmaInits::zeros()).unwrap();
    assert!(wrong.load_checkpoint(&path).is_err());
    std::fs::remove_dir_all(&dir).ok();
}

/// Bad input gives typed errors, not panics.
#[test]
fn errors_are_typed() {
    let gpu = gpu();
    #[derive(Module, Debug)]
    struct Empty {}
    let empty = Empty {};
    let config = Config::new(Method::Bloop);
    assert!(matches!(
        BurnBloop::new(&empty, config, &gpu.kernels, &gpu.queue, EmaInits::zeros()),
        Err(bloop_burn::Error::NoParameters)
    ));
    let model = Mlp::new(&gpu.device);
    let bad = Config::new(Method::Bloop).lambda(-1.0);
    assert!(matches!(
        BurnBloop::new(&model, bad, &gpu.kernels, &gpu.queue, EmaInits::zeros()),
        Err(bloop_burn::Error::Bloop(_))
    ));
}

/// Gradients that do not fit the module (another rank or shape, another model's) are refused
/// before anything is taken or recorded: the averages and the step count stay as they were.
#[test]
fn gradients_that_do_not_fit_the_module_are_refused() {
    let gpu = gpu();
    let device = gpu.device.clone().autodiff();
    let inner = gpu.device.clone();
    let model = Mlp::new(&device);
    let other = Mlp::new(&device);
    let config = Config::new(Method::Bloop).ema(0.5).lambda(1.0);
    let inits = EmaInits::both(EmaInit::Normal { seed: 3 });
    let mut bloop = BurnBloop::new(&model, config, &gpu.kernels, &gpu.queue, inits).unwrap();
    let snapshot = |b: &BurnBloop| (b.state().steps(), b.state().read_ema(bloop::EmaRole::Main).unwrap());
    let before = snapshot(&bloop);
    let grads = |m: &Mlp| {
        let (x, y) = batch(&device, 0);
        let main = GradientsParams::from_grads(m.main_loss(x, y).backward(), m);
        let aux = GradientsParams::from_grads(m.aux_loss().backward(), m);
        (main, aux)
    };
    use bloop_burn::Error;
    let (mut main, aux) = grads(&model);
    main.register::<1>(model.l1.weight.id, Tensor::<1>::zeros([8 * 16], &inner));
    let err = bloop.combine(main, aux).unwrap_err();
    assert!(
        matches!(&err, Error::GradientRank { name, role: "main", expected: 2, got: Some(1) } if name == "l1.weight"),
        "{err}"
    );
    let (main, mut aux) = grads(&model);
    aux.register::<2>(model.l2.weight.id, Tensor::<2>::zeros([12, 16], &inner));
    let err = bloop.combine(main, aux).unwrap_err();
    assert!(
        matches!(&err, Error::GradientShape { name, role: "aux", expected, got } if name == "l2.weight" && expected == &[16, 12] && got == &[12, 16]),
        "{err}"
    );
    let (foreign, _) = grads(&other);
    let (_, aux) = grads(&model);
    let err = bloop.combine(foreign, aux).unwrap_err();
    assert!(matches!(err, Error::ForeignGradients { role: "main", given: 6 }), "{err}");
    let (main, _) = grads(&model);
    let (_, foreign) = grads(&other);
    let err = bloop.combine(main, foreign).unwrap_err();
    assert!(matches!(err, Error::ForeignGradients { role: "aux", given: 2 }), "{err}");
    let err = bloop.combine(GradientsParams::new(), GradientsParams::new()).unwrap_err();
    assert!(matches!(err, Error::ForeignGradients { role: "main", given: 0 }), "{err}");
    assert_eq!(snapshot(&bloop), before);
    // An empty aux set is a loss that touches nothing: zero aux gradients, a step like any other.
    let (main, _) = grads(&model);
    bloop.combine(main, GradientsParams::new()).unwrap();
    assert_eq!(bloop.state().steps(), 1);
}
