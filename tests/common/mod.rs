//! Helpers shared by the integration tests: one device per test binary, random data, and
//! scenarios that lay gradients out the ways users do.
#![allow(dead_code)]

use std::sync::{Arc, OnceLock};

use bloop::reference::{relative_error, widen, ReferenceState};
use bloop::rng::SplitMix64;
use bloop::{
    read_leaves, BloopState, Config, EmaInit, EmaInits, EmaRole, ExternalGradients, GpuContext, GradientPool, Kernels,
    Layout, LeafBuffer, Method, Output, StepBindings,
};

pub fn gpu() -> &'static GpuContext {
    static GPU: OnceLock<GpuContext> = OnceLock::new();
    GPU.get_or_init(|| GpuContext::from_env().expect("a GPU adapter (lavapipe is enough)"))
}

/// The device's storage buffers per shader stage: 32 on lavapipe 22, 16 on GL (llvmpipe), 10 on
/// SwiftShader, 8 in WebGPU's defaults.
pub fn storage_buffer_limit() -> u32 {
    gpu().device.limits().max_storage_buffers_per_shader_stage
}

/// `result`'s value where the variant fits a device with `limit` storage buffers per stage;
/// `None`, with the reason printed, where it was refused with the typed error that names that
/// limit and the device really has fewer than the variant binds. Any other error fails the test,
/// and so does a refusal on a device with enough (so a skip cannot hide a wrong answer where the
/// variant exists) or one that needs more than `most_needed`, what the variant binds today (the
/// bindings may only shrink, as they do where planes share a buffer).
pub fn unless_too_many_storage_buffers<T>(
    result: bloop::Result<T>,
    limit: u32,
    most_needed: u32,
    what: &str,
) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(bloop::Error::ExceedsCount {
            needed,
            limit: refused_at,
            limit_name: "max_storage_buffers_per_shader_stage",
            ..
        }) => {
            assert_eq!(refused_at, limit, "{what}: refused at another limit than the device's");
            assert!(needed > limit, "{what}: refused needing {needed} on a device with {limit}");
            assert!(needed <= most_needed, "{what}: needs {needed} storage buffers, more than {most_needed}");
            eprintln!(
                "refused, as it must be: {what} needs {needed} storage buffers per stage, the device has {limit}"
            );
            None
        }
        Err(other) => panic!("{what}: {other:?}"),
    }
}

/// What a hierarchy of `k` auxiliary losses binds today with one slot: the scalars, partials,
/// tile table, k + 1 gradients, k averages and the output.
pub fn hierarchy_most_storage_buffers(k: usize) -> u32 {
    2 * k as u32 + 5
}

/// The most auxiliary levels, up to `wanted`, whose hierarchy the shared kernels can make on this
/// device (every refusal above it checked and printed), so that a test of something the number
/// of levels does not change still runs where the device has fewer storage buffers.
pub fn levels_that_fit(wanted: usize) -> usize {
    let layout = Layout::from_lengths(&[1]).unwrap();
    (2..=wanted)
        .rev()
        .find(|&k| {
            let config = Config::hierarchy(&vec![0.5; k]);
            let made = BloopState::new(&kernels(), &gpu().queue, &layout, config, EmaInits::zeros());
            let (limit, most) = (storage_buffer_limit(), hierarchy_most_storage_buffers(k));
            unless_too_many_storage_buffers(made, limit, most, &format!("a hierarchy of {k}")).is_some()
        })
        .unwrap_or(1)
}

/// Kernels with the tile length a GPU gets (lavapipe alone would pick `CPU_TILE_LEN`), so that
/// the tests sharing them cut steps into tiles as users' GPUs do; `tests/tiles.rs` covers the
/// other lengths, and the tests that make `Kernels::new` their own use the adapter's choice.
pub fn kernels() -> Arc<Kernels> {
    static KERNELS: OnceLock<Arc<Kernels>> = OnceLock::new();
    KERNELS
        .get_or_init(|| {
            let options = bloop::KernelOptions { tile_len: Some(bloop::TILE_LEN as u32), ..Default::default() };
            Kernels::with_options(&gpu().device, options)
        })
        .clone()
}

/// Kernels with `options` on the test device, sharing the compiled variants of [`kernels`]:
/// the tests that compare options (tile lengths, slots, vector loads, the reduction, 16-bit
/// storage) would otherwise compile every variant they share once per set, and SwiftShader
/// keeps no disk cache of its compiled shaders.
pub fn kernels_with_options(options: bloop::KernelOptions) -> Arc<Kernels> {
    kernels().with_other_options(options)
}

/// Written around leaves in user buffers; any change to it is a write outside the leaves.
pub const GUARD: f32 = -7.25e13;

pub fn normal_leaves(rng: &mut SplitMix64, lengths: &[u64], scale: f64) -> Vec<Vec<f32>> {
    lengths.iter().map(|&n| (0..n).map(|_| (rng.next_normal() * scale) as f32).collect()).collect()
}

pub fn below(rng: &mut SplitMix64, n: u64) -> u64 {
    rng.next_u64() % n
}

/// How a scenario hands its gradients to the library.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrangement {
    Pool {
        in_place: bool,
    },
    /// Main, aux (and output unless in place) leaves packed into one flat buffer at random
    /// element offsets, guards between them.
    Flat {
        in_place: bool,
    },
    /// Main and aux in one flat buffer, outputs in a second one.
    FlatSeparateOutput,
    /// Every leaf of every role in a buffer of its own, at a random offset.
    PerLeaf,
    /// Like a pooled allocator (burn's, cubecl's): a few large pages, each leaf of each role
    /// placed in a random page after unrelated live data (guards), so main, aux and output
    /// ranges of different leaves interleave in every page.
    Pages,
    /// As `Pages` with this many pages: more distinct buffers than one dispatch's slots.
    ManyPages {
        pages: usize,
    },
}

/// A user buffer with the leaf ranges it holds; everything else must keep the guard value.
pub struct GuardedBuffer {
    pub buffer: wgpu::Buffer,
    pub len: u64,
    pub owned: Vec<(u64, u64)>,
    /// The buffer's device and queue, for reading it back.
    device: wgpu::Device,
    queue: wgpu::Queue,
}

impl GuardedBuffer {
    pub fn new(device: &wgpu::Device, queue: &wgpu::Queue, len: u64) -> GuardedBuffer {
        let buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("test leaves"),
            size: len * 4,
            usage: bloop::pool::POOL_USAGE,
            mapped_at_creation: false,
        });
        queue.write_buffer(&buffer, 0, bytemuck::cast_slice(&vec![GUARD; len as usize]));
        GuardedBuffer { buffer, len, owned: Vec::new(), device: device.clone(), queue: queue.clone() }
    }

    pub fn leaf(&mut self, offset: u64, len: u64) -> LeafBuffer {
        self.owned.push((offset, len));
        LeafBuffer::new(&self.buffer, offset * 4, len)
    }

    /// Elements outside the leaves that no longer hold the guard value.
    pub fn corrupted(&self) -> usize {
        let all = &read_leaves(&self.device, &self.queue, &[LeafBuffer::new(&self.buffer, 0, self.len)]).unwrap()[0];
        let mut inside = vec![false; all.len()];
        for &(o, n) in &self.owned {
            inside[o as usize..(o + n) as usize].fill(true);
        }
        all.iter().zip(inside).filter(|(v, inside)| !inside && v.to_bits() != GUARD.to_bits()).count()
    }
}

pub struct Leaves {
    pub main: Vec<LeafBuffer>,
    pub aux: Vec<LeafBuffer>,
    pub output: Option<Vec<LeafBuffer>>,
    pub guarded: Vec<GuardedBuffer>,
    pub pool: Option<GradientPool>,
}

impl Leaves {
    pub fn new(rng: &mut SplitMix64, gpu: &GpuContext, layout: &Layout, arrangement: Arrangement) -> Leaves {
        let (device, queue) = (&gpu.device, &gpu.queue);
        let lengths = layout.lengths();
        let gap = |rng: &mut SplitMix64| below(rng, 10);
        match arrangement {
            Arrangement::Pool { in_place } => {
                let pool = GradientPool::new(device, layout, in_place).unwrap();
                Leaves {
                    main: pool.main_leaves().to_vec(),
                    aux: pool.aux_leaves().to_vec(),
                    output: (!in_place).then(|| pool.output_leaves().to_vec()),
                    guarded: vec![],
                    pool: Some(pool),
                }
            }
            Arrangement::Flat { .. } | Arrangement::FlatSeparateOutput => {
                let roles = if arrangement == (Arrangement::Flat { in_place: false }) { 3 } else { 2 };
                let total: u64 = lengths.iter().sum::<u64>() * roles + 10 * lengths.len() as u64 * roles + 16;
                let mut flat = GuardedBuffer::new(device, queue, total);
                let mut at = gap(rng);
                let mut per_role = vec![Vec::new(); roles as usize];
                for &n in &lengths {
                    for role in per_role.iter_mut() {
                        role.push(flat.leaf(at, n));
                        at += n + gap(rng);
                    }
                }
                let mut guarded = vec![];
                let output = match arrangement {
                    Arrangement::Flat { in_place: false } => per_role.pop(),
                    Arrangement::FlatSeparateOutput => {
                        let total: u64 = lengths.iter().sum::<u64>() + 10 * lengths.len() as u64 + 16;
                        let mut out = GuardedBuffer::new(device, queue, total);
                        let mut at = gap(rng);
                        let leaves = lengths
                            .iter()
                            .map(|&n| {
                                let leaf = out.leaf(at, n);
                                at += n + gap(rng);
                                leaf
                            })
                            .collect();
                        guarded.push(out);
                        Some(leaves)
                    }
                    _ => None,
                };
                let aux = per_role.pop().unwrap();
                let main = per_role.pop().unwrap();
                guarded.insert(0, flat);
                Leaves { main, aux, output, guarded, pool: None }
            }
            Arrangement::Pages | Arrangement::ManyPages { .. } => {
                let pages = match arrangement {
                    Arrangement::ManyPages { pages } => pages,
                    _ => 2 + below(rng, 3) as usize,
                };
                let capacity: u64 = 3 * (lengths.iter().sum::<u64>() + 10 * lengths.len() as u64) + 16;
                let mut guarded: Vec<GuardedBuffer> =
                    (0..pages).map(|_| GuardedBuffer::new(device, queue, capacity)).collect();
                let mut cursors = vec![0u64; pages];
                let mut roles = vec![Vec::new(); 3];
                for &n in &lengths {
                    for role in roles.iter_mut() {
                        let page = below(rng, pages as u64) as usize;
                        let at = cursors[page] + gap(rng);
                        role.push(guarded[page].leaf(at, n));
                        cursors[page] = at + n;
                    }
                }
                let output = roles.pop();
                let aux = roles.pop().unwrap();
                let main = roles.pop().unwrap();
                Leaves { main, aux, output, guarded, pool: None }
            }
            Arrangement::PerLeaf => {
                let mut guarded = vec![];
                let mut role = |rng: &mut SplitMix64| -> Vec<LeafBuffer> {
                    lengths
                        .iter()
                        .map(|&n| {
                            let at = gap(rng);
                            let mut b = GuardedBuffer::new(device, queue, at + n + gap(rng));
                            let leaf = b.leaf(at, n);
                            guarded.push(b);
                            leaf
                        })
                        .collect()
                };
                let main = role(rng);
                let aux = role(rng);
                let output = Some(role(rng));
                Leaves { main, aux, output, guarded, pool: None }
            }
        }
    }

    pub fn gradients(&self) -> ExternalGradients<'_> {
        ExternalGradients {
            main: &self.main,
            aux: &self.aux,
            output: self.output.as_deref().map_or(Output::InPlace, Output::Buffers),
        }
    }

    pub fn bind(&self, state: &BloopState) -> StepBindings {
        match &self.pool {
            Some(pool) => state.bind_pool(pool).unwrap(),
            None => state.bind_external(&self.gradients()).unwrap(),
        }
    }

    pub fn output_leaves(&self) -> &[LeafBuffer] {
        self.output.as_deref().unwrap_or(&self.main)
    }

    pub fn corrupted_guards(&self) -> usize {
        self.guarded.iter().map(|g| g.corrupted()).sum()
    }
}

/// Writes one step's gradients, poisons the outputs with NaN, records and submits the step.
pub fn run_step(
    state: &mut BloopState,
    leaves: &Leaves,
    bindings: &StepBindings,
    g_main: &[Vec<f32>],
    g_aux: &[Vec<f32>],
) {
    run_step_on(gpu(), state, leaves, bindings, g_main, g_aux);
}

/// [`run_step`] on a device of the test's own (lowered limits, say).
pub fn run_step_on(
    gpu: &GpuContext,
    state: &mut BloopState,
    leaves: &Leaves,
    bindings: &StepBindings,
    g_main: &[Vec<f32>],
    g_aux: &[Vec<f32>],
) {
    for (leaf, v) in leaves.main.iter().zip(g_main).chain(leaves.aux.iter().zip(g_aux)) {
        gpu.queue.write_buffer(&leaf.buffer, leaf.offset, bytemuck::cast_slice(v));
    }
    if let Some(out) = &leaves.output {
        for leaf in out {
            gpu.queue.write_buffer(&leaf.buffer, leaf.offset, bytemuck::cast_slice(&vec![f32::NAN; leaf.len as usize]));
        }
    }
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    state.record_step(&mut encoder, bindings).unwrap();
    gpu.queue.submit([encoder.finish()]);
}

/// Worst relative errors (direction, main EMA, aux EMA) of one GPU step against the reference.
pub fn compare_step(
    state: &BloopState,
    reference: &ReferenceState,
    direction: &[Vec<f64>],
    outputs: &[LeafBuffer],
) -> [f64; 3] {
    let gpu = gpu();
    let out = widen(&read_leaves(&gpu.device, &gpu.queue, outputs).unwrap());
    let method = state.config().method;
    let main = if method.has_main_ema() {
        relative_error(&widen(&state.read_ema(EmaRole::Main).unwrap()), &reference.main_ema)
    } else {
        0.0
    };
    let aux = if method.has_aux_ema() {
        relative_error(&widen(&state.read_ema(EmaRole::Aux).unwrap()), &reference.aux_ema)
    } else {
        0.0
    };
    [relative_error(&out, direction), main, aux]
}

/// Three steps of unit-scale main and 0.7-scale aux gradients through `bindings`, each against
/// the reference within `bound` (direction and averages).
#[allow(dead_code)] // not every test binary that includes this module calls it
#[allow(clippy::too_many_arguments)]
pub fn check_three_steps(
    rng: &mut SplitMix64,
    state: &mut BloopState,
    reference: &mut ReferenceState,
    leaves: &Leaves,
    bindings: &StepBindings,
    lengths: &[u64],
    bound: f64,
    context: &str,
) {
    for step in 0..3 {
        let g_main = normal_leaves(rng, lengths, 1.0);
        let g_aux = normal_leaves(rng, lengths, 0.7);
        run_step(state, leaves, bindings, &g_main, &g_aux);
        let expected = reference.step(&widen(&g_main), &widen(&g_aux));
        let errors = compare_step(state, reference, &expected, leaves.output_leaves());
        assert!(errors.iter().all(|&e| e <= bound), "step {step}: {errors:?}; {context}");
    }
}

/// Three steps of `config` on `kernels` over the case `seed` draws: the layout `layout` draws,
/// random initial averages, the gradients placed as `arrangement` (guards around every user
/// range), each step against the reference within `bound`, guards intact after. The same seed
/// gives the same case whatever the kernels, so runs on different kernels compare. Returns the
/// bindings and the last direction.
pub fn check_seeded(
    kernels: &Arc<Kernels>,
    seed: u64,
    config: Config,
    arrangement: Arrangement,
    layout: impl FnOnce(&mut SplitMix64) -> Layout,
    bound: f64,
    context: &str,
) -> (StepBindings, Vec<Vec<f64>>) {
    let mut rng = SplitMix64::new(seed);
    let layout = layout(&mut rng);
    let lengths = layout.lengths();
    let main = normal_leaves(&mut rng, &lengths, 1.0);
    let aux = normal_leaves(&mut rng, &lengths, 1.0);
    let (mut state, mut reference) = state_on(kernels, &layout, config, main, aux);
    let leaves = Leaves::new(&mut rng, gpu(), &layout, arrangement);
    let bindings = leaves.bind(&state);
    let context = format!("seed {seed}, {arrangement:?}, {context}, {config:?}, {bindings:?}");
    check_three_steps(&mut rng, &mut state, &mut reference, &leaves, &bindings, &lengths, bound, &context);
    assert_eq!(leaves.corrupted_guards(), 0, "writes outside the leaves; {context}");
    let direction = widen(&read_leaves(&gpu().device, &gpu().queue, leaves.output_leaves()).unwrap());
    (bindings, direction)
}

/// A random valid config for `method`.
pub fn random_config(rng: &mut SplitMix64, method: Method) -> Config {
    let ema = match below(rng, 5) {
        0 => 0.0,
        1 => 1.0,
        _ => rng.next_f64(),
    };
    let lambda = if below(rng, 6) == 0 { 0.0 } else { 10f64.powf(rng.next_f64() * 4.0 - 3.0) };
    let ratio_only = matches!(method, Method::Bloop | Method::DynamicBarrier) && below(rng, 3) == 0;
    Config::new(method)
        .ema(ema)
        .lambda(lambda)
        .eps(if below(rng, 2) == 0 { 1e-7 } else { 10f64.powf(-rng.next_f64() * 6.0 - 2.0) })
        .rescale(below(rng, 2) == 0)
        .ratio_only(ratio_only)
        .order(if below(rng, 2) == 0 { bloop::Order::UpdateFirst } else { bloop::Order::ProjectFirst })
}

/// Initial EMA values a state and its reference can share.
pub fn random_init(rng: &mut SplitMix64, lengths: &[u64]) -> Vec<Vec<f32>> {
    match below(rng, 3) {
        0 => lengths.iter().map(|&n| vec![0.0; n as usize]).collect(),
        _ => {
            let scale = 0.5 + rng.next_f64();
            normal_leaves(rng, lengths, scale)
        }
    }
}

pub fn state_with(
    layout: &Layout,
    config: Config,
    main: Vec<Vec<f32>>,
    aux: Vec<Vec<f32>>,
) -> (BloopState, ReferenceState) {
    state_on(&kernels(), layout, config, main, aux)
}

pub fn state_on(
    kernels: &Arc<Kernels>,
    layout: &Layout,
    config: Config,
    main: Vec<Vec<f32>>,
    aux: Vec<Vec<f32>>,
) -> (BloopState, ReferenceState) {
    let gpu = gpu();
    let reference = ReferenceState::new(
        config,
        if config.method.has_main_ema() { widen(&main) } else { vec![] },
        if config.method.has_aux_ema() { widen(&aux) } else { vec![] },
    );
    let inits = EmaInits { main: EmaInit::Values(main), aux: EmaInit::Values(aux) };
    let state = BloopState::new(kernels, &gpu.queue, layout, config, inits).unwrap();
    (state, reference)
}

/// `count` leaves of 1 to 6000 elements (some past one tile), never a multiple of 4.
pub fn odd_layout(rng: &mut SplitMix64, count: usize) -> Layout {
    let lengths: Vec<u64> = (0..count)
        .map(|_| {
            let n = if below(rng, 3) == 0 { 1 + below(rng, 16) } else { 1 + below(rng, 6000) };
            n - (n % 4 == 0) as u64
        })
        .collect();
    Layout::from_lengths(&lengths).unwrap()
}

/// Configs that between them reach every two-loss stage set: each method, `ratio_only` without
/// the guard, the paper's order, mixing with and without the guard.
pub fn varied_configs() -> [Config; 6] {
    [
        Config::new(Method::Bloop).ema(0.3).lambda(0.8),
        Config::new(Method::Bloop).ema(0.3).lambda(0.8).ratio_only(true).guard(false),
        Config::new(Method::DynamicBarrier).ema(0.6).lambda(2.0).order(bloop::Order::ProjectFirst),
        Config::new(Method::PcGrad).ema(0.2).lambda(0.5),
        Config::new(Method::Mixed).lambda(0.5),
        Config::new(Method::Mixed).lambda(0.5).guard(false),
    ]
}

/// Every leaf of `lengths` in a guarded buffer of its own, at a random word offset.
pub fn per_leaf(
    rng: &mut SplitMix64,
    lengths: &[u64],
    dtype: bloop::DType,
    guarded: &mut Vec<GuardedBuffer>,
) -> Vec<LeafBuffer> {
    lengths
        .iter()
        .map(|&n| {
            let at = below(rng, 10);
            let mut b = GuardedBuffer::new(&gpu().device, &gpu().queue, at + n + below(rng, 10) + 1);
            // 16-bit leaves fill whole words but the last one (odd lengths).
            b.owned.push((at, (n * dtype.size()).div_ceil(4)));
            let leaf = LeafBuffer::typed(&b.buffer, at * 4, n, dtype);
            guarded.push(b);
            leaf
        })
        .collect()
}

/// Writes `values` into `leaves`, each in its leaf's type (whole words: a 16-bit leaf's odd
/// end is padded with zero).
pub fn write_leaves(leaves: &[LeafBuffer], values: &[Vec<f32>]) {
    for (leaf, v) in leaves.iter().zip(values) {
        let mut bytes = leaf.dtype.encode(v);
        bytes.resize(bytes.len().next_multiple_of(4), 0);
        gpu().queue.write_buffer(&leaf.buffer, leaf.offset, &bytes);
    }
}

/// `n` leaves' values of `lengths`, rounded to `dtype`.
pub fn rounded_leaves(rng: &mut SplitMix64, n: usize, lengths: &[u64], dtype: bloop::DType) -> Vec<Vec<Vec<f32>>> {
    (0..n)
        .map(|_| {
            normal_leaves(rng, lengths, 1.0)
                .into_iter()
                .map(|l| l.into_iter().map(|x| dtype.round(x)).collect())
                .collect()
        })
        .collect()
}
