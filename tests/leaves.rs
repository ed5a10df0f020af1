//! Many small leaves: leaves back to back in every role run as one segment, and short
//! segments are walked one per invocation (`plan.rs`, `slot_walk` in `shaders/bindings.wgsl`),
//! so a model of many tiny leaves costs about what one leaf of its size costs. Checked here:
//! the tiles such layouts take, and every method and the hierarchy against the f64 reference
//! on many tiny, one-element, odd and large leaves mixed, through the pool and user buffers
//! (leaves back to back, and with guards around every user range).

mod common;

use std::sync::Arc;

use bloop::hierarchy::HierarchyReference;
use bloop::reference::{relative_error, widen};
use bloop::rng::SplitMix64;
use bloop::{
    read_leaves, BloopState, Config, EmaInit, GradientPool, KernelOptions, Kernels, Layout, LeafBuffer, Method, Output,
    CPU_TILE_LEN, TILE_LEN,
};
use common::{below, gpu, normal_leaves, Arrangement, GuardedBuffer, Leaves};

const BOUND: f64 = 1e-5;

fn kernels_with(tile_len: u32) -> Arc<Kernels> {
    common::kernels_with_options(KernelOptions { tile_len: Some(tile_len), ..Default::default() })
}

/// Tile lengths whose narrow segments are of at most 1, 4, 16 and 64 elements.
const TILE_LENS: [u32; 4] = [256, 1024, TILE_LEN as u32, CPU_TILE_LEN as u32];

fn pool_tiles(kernels: &Arc<Kernels>, layout: &Layout) -> u64 {
    let state =
        BloopState::new(kernels, &gpu().queue, layout, Config::new(Method::Bloop), bloop::EmaInits::zeros()).unwrap();
    let pool = GradientPool::new(&gpu().device, layout, false).unwrap();
    state.bind_pool(&pool).unwrap().tile_count()
}

/// Leaves of each role back to back in one buffer of its own, guards before and after.
fn back_to_back(lengths: &[u64], in_place: bool) -> Leaves {
    let total: u64 = lengths.iter().sum();
    let role = || {
        let mut buffer = GuardedBuffer::new(&gpu().device, &gpu().queue, total + 8);
        let mut at = 4;
        let leaves: Vec<LeafBuffer> = lengths
            .iter()
            .map(|&n| {
                let leaf = buffer.leaf(at, n);
                at += n;
                leaf
            })
            .collect();
        (buffer, leaves)
    };
    let (main_buffer, main) = role();
    let (aux_buffer, aux) = role();
    let mut guarded = vec![main_buffer, aux_buffer];
    let output = (!in_place).then(|| {
        let (buffer, leaves) = role();
        guarded.push(buffer);
        leaves
    });
    Leaves { main, aux, output, guarded, pool: None }
}

#[test]
fn leaves_back_to_back_take_the_tiles_of_one_leaf_of_their_size() {
    for tile_len in TILE_LENS {
        let kernels = kernels_with(tile_len);
        // 64 f32 elements fill a pool's 256-byte placement: its leaves and the state's
        // averages lie back to back.
        let many = Layout::from_lengths(&[64; 1000]).unwrap();
        let one = Layout::from_lengths(&[64_000]).unwrap();
        assert_eq!(pool_tiles(&kernels, &many), pool_tiles(&kernels, &one), "tile_len {tile_len}");
        // One-element leaves are walked one per invocation: a round of the workgroup takes 256.
        let ones = Layout::from_lengths(&[1; 20_000]).unwrap();
        assert_eq!(pool_tiles(&kernels, &ones), 20_000u64.div_ceil(tile_len as u64), "tile_len {tile_len}");
        // Leaves of 70 elements are neither: each is a wide segment of a round (a tile holds
        // tile_len / 256 of them), or, where a tile's rounds reach 70, narrow.
        let wide = Layout::from_lengths(&[70; 1000]).unwrap();
        let rounds = tile_len as u64 / 256;
        let expected = if rounds >= 70 { 1000u64.div_ceil(256) } else { 1000u64.div_ceil(rounds) };
        assert_eq!(pool_tiles(&kernels, &wide), expected, "tile_len {tile_len}");
    }
}

/// Many tiny leaves, one-element leaves, leaves around the narrow limits (1, 4, 16, 64) and
/// odd sizes, mixed with a few large ones.
fn draw_layout(rng: &mut SplitMix64) -> Layout {
    let count = 50 + below(rng, 400) as usize;
    let kind = below(rng, 3);
    let lengths: Vec<u64> = (0..count)
        .map(|_| match (kind, below(rng, 40)) {
            (0, _) => 1,
            (_, 0) => 3_000 + below(rng, 40_000),
            (1, _) => 1 + below(rng, 12),
            _ => [1, 3, 4, 5, 15, 16, 17, 63, 64, 65, 127, 128, 129, 255, 257][below(rng, 15) as usize],
        })
        .collect();
    Layout::from_lengths(&lengths).unwrap()
}

fn configs() -> [Config; 6] {
    [
        Config::new(Method::Bloop).ema(0.3).lambda(0.8),
        Config::new(Method::Bloop).ema(0.4).lambda(0.6).ratio_only(true),
        Config::new(Method::DynamicBarrier).ema(0.6).lambda(2.0).order(bloop::Order::ProjectFirst),
        Config::new(Method::PcGrad).ema(0.2).lambda(0.5),
        Config::new(Method::Mixed).lambda(0.5),
        Config::new(Method::Bloop).ema(0.5).lambda(0.3).guard(false).rescale(true),
    ]
}

#[test]
fn many_small_leaves_match_the_reference_in_every_arrangement() {
    let arrangements = [
        Arrangement::Pool { in_place: false },
        Arrangement::Pool { in_place: true },
        Arrangement::Flat { in_place: false },
        Arrangement::FlatSeparateOutput,
        Arrangement::ManyPages { pages: 6 },
    ];
    for (i, config) in configs().into_iter().enumerate() {
        for (j, arrangement) in arrangements.into_iter().enumerate() {
            let tile_len = TILE_LENS[(i + j) % TILE_LENS.len()];
            let seed = 7000 + 10 * i as u64 + j as u64;
            common::check_seeded(
                &kernels_with(tile_len),
                seed,
                config,
                arrangement,
                draw_layout,
                BOUND,
                &format!("tile_len {tile_len}"),
            );
        }
    }
}

#[test]
fn leaves_back_to_back_in_user_buffers_match_the_reference() {
    for (i, config) in configs().into_iter().enumerate() {
        for in_place in [false, true] {
            let tile_len = TILE_LENS[(i + in_place as usize) % TILE_LENS.len()];
            let seed = 8000 + 10 * i as u64 + in_place as u64;
            let mut rng = SplitMix64::new(seed);
            let layout = draw_layout(&mut rng);
            let lengths = layout.lengths();
            let main = normal_leaves(&mut rng, &lengths, 1.0);
            let aux = normal_leaves(&mut rng, &lengths, 1.0);
            let (mut state, mut reference) = common::state_on(&kernels_with(tile_len), &layout, config, main, aux);
            let leaves = back_to_back(&lengths, in_place);
            let bindings = leaves.bind(&state);
            let context = format!("seed {seed}, in place {in_place}, tile_len {tile_len}, {config:?}");
            common::check_three_steps(
                &mut rng,
                &mut state,
                &mut reference,
                &leaves,
                &bindings,
                &lengths,
                BOUND,
                &context,
            );
            assert_eq!(leaves.corrupted_guards(), 0, "writes outside the leaves; {context}");
        }
    }
}

#[test]
fn a_hierarchy_of_many_small_leaves_matches_the_reference() {
    for (case, (k, in_place)) in [(2, false), (3, true), (4, false)].into_iter().enumerate() {
        let tile_len = TILE_LENS[case % TILE_LENS.len() + 1];
        let kernels = kernels_with(tile_len);
        let mut rng = SplitMix64::new(9000 + case as u64);
        let layout = draw_layout(&mut rng);
        let lengths = layout.lengths();
        let lambdas: Vec<f64> = (0..k).map(|l| 0.5 / (l + 1) as f64).collect();
        let config = Config::hierarchy(&lambdas).ema(0.3);
        let inits: Vec<Vec<Vec<f32>>> = (0..k).map(|_| normal_leaves(&mut rng, &lengths, 1.0)).collect();
        let values = inits.iter().map(|v| EmaInit::Values(v.clone())).collect();
        let mut state = BloopState::new_hierarchy(&kernels, &gpu().queue, &layout, config, values).unwrap();
        let mut reference = HierarchyReference::new(config, inits.iter().map(|v| widen(v)).collect());
        // Through the pool, and through leaves back to back in buffers of the user's.
        let pool = GradientPool::hierarchy(&gpu().device, &layout, k, in_place, Default::default()).unwrap();
        let pool_bindings = state.bind_pool(&pool).unwrap();
        let flat: Vec<Leaves> = (0..=k).map(|_| back_to_back(&lengths, true)).collect();
        let out = back_to_back(&lengths, true);
        let lists: Vec<&[LeafBuffer]> = flat.iter().map(|l| l.main.as_slice()).collect();
        let flat_bindings = state.bind_hierarchy(&lists, Output::Buffers(&out.main)).unwrap();
        for (step, use_pool) in [true, false, true, false].into_iter().enumerate() {
            let grads: Vec<Vec<Vec<f32>>> = (0..=k).map(|_| normal_leaves(&mut rng, &lengths, 1.0)).collect();
            let targets: Vec<&[LeafBuffer]> = if use_pool {
                (0..=k).map(|level| pool.gradient_leaves(level).unwrap()).collect()
            } else {
                lists.clone()
            };
            for (leaves, g) in targets.iter().zip(&grads) {
                for (leaf, v) in leaves.iter().zip(g) {
                    gpu().queue.write_buffer(&leaf.buffer, leaf.offset, bytemuck::cast_slice(v));
                }
            }
            let bindings = if use_pool { &pool_bindings } else { &flat_bindings };
            let mut encoder = gpu().device.create_command_encoder(&Default::default());
            state.record_step(&mut encoder, bindings).unwrap();
            gpu().queue.submit([encoder.finish()]);
            let got = read_leaves(&gpu().device, &gpu().queue, bindings.output_leaves()).unwrap();
            let expected = reference.step(&grads.iter().map(|g| widen(g)).collect::<Vec<_>>());
            let error = relative_error(&widen(&got), &expected);
            assert!(error <= BOUND, "k {k}, step {step}, pool {use_pool}, tile_len {tile_len}: {error}");
        }
        let corrupted: usize = flat.iter().chain([&out]).map(Leaves::corrupted_guards).sum();
        assert_eq!(corrupted, 0, "writes outside the leaves; k {k}");
    }
}

#[test]
fn per_leaf_buffers_of_tiny_leaves_match_the_reference() {
    // A buffer per leaf and role: no two leaves can merge, every tiny one is narrow.
    for (i, config) in configs().into_iter().enumerate().step_by(2) {
        let seed = 9500 + i as u64;
        let draw = |rng: &mut SplitMix64| {
            let lengths: Vec<u64> = (0..40 + below(rng, 40)).map(|_| 1 + below(rng, 70)).collect();
            Layout::from_lengths(&lengths).unwrap()
        };
        let kernels = kernels_with(TILE_LENS[i % TILE_LENS.len()]);
        common::check_seeded(&kernels, seed, config, Arrangement::PerLeaf, draw, BOUND, "per leaf");
    }
}
