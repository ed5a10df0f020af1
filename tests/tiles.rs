//! Tile lengths: a workgroup's tile is `KernelOptions::tile_len` elements of work (rounded to
//! whole rounds of the workgroup), chosen by adapter when not set. Every length cuts the same
//! steps into different tiles; each is checked against the f64 reference, with poisoned
//! outputs and guards around every user range, over a pool, flat buffers, a buffer per leaf
//! and pages, and the lengths against each other.

mod common;

use std::sync::Arc;

use bloop::reference::relative_error;
use bloop::rng::SplitMix64;
use bloop::{Config, KernelOptions, Kernels, Layout, Method, CPU_TILE_LEN, TILE_LEN};
use common::{below, gpu, Arrangement};

const BOUND: f64 = 1e-5;

fn kernels_with(tile_len: Option<u32>, max_slots: u32) -> Arc<Kernels> {
    common::kernels_with_options(KernelOptions { tile_len, max_slots, ..Default::default() })
}

#[test]
fn the_tile_length_is_chosen_by_adapter_and_rounded_to_whole_rounds() {
    let cpu = gpu().adapter.get_info().device_type == wgpu::DeviceType::Cpu;
    let chosen = Kernels::new(&gpu().device);
    assert_eq!(chosen.tile_len(), if cpu { CPU_TILE_LEN } else { TILE_LEN });
    assert_eq!(chosen.options().tile_len, Some(chosen.tile_len() as u32));
    for (asked, got) in
        [(Some(1000), 1024), (Some(0), 256), (Some(256), 256), (Some(4096), 4096), (Some(u32::MAX), 1 << 30)]
    {
        assert_eq!(kernels_with(asked, 16).tile_len(), got, "asked {asked:?}");
    }
}

#[test]
fn a_leaf_takes_as_many_tiles_as_its_length_needs() {
    let n = 50_001;
    let layout = Layout::from_lengths(&[n]).unwrap();
    for tile_len in [256u32, 1024, TILE_LEN as u32, CPU_TILE_LEN as u32] {
        let kernels = kernels_with(Some(tile_len), 16);
        let state = bloop::BloopState::new(
            &kernels,
            &gpu().queue,
            &layout,
            Config::new(Method::Bloop),
            bloop::EmaInits::zeros(),
        )
        .unwrap();
        let pool = bloop::GradientPool::new(&gpu().device, &layout, false).unwrap();
        let bindings = state.bind_pool(&pool).unwrap();
        assert_eq!(bindings.tile_count(), n.div_ceil(tile_len as u64), "tile_len {tile_len}");
    }
}

/// `count` leaves of 1 to 20,000 elements, a quarter of them tiny.
fn layout(rng: &mut SplitMix64, count: usize) -> Layout {
    let lengths: Vec<u64> =
        (0..count).map(|_| if below(rng, 4) == 0 { 1 + below(rng, 12) } else { 1 + below(rng, 20_000) }).collect();
    Layout::from_lengths(&lengths).unwrap()
}

#[test]
fn every_tile_length_matches_the_reference_in_every_arrangement() {
    let configs = [
        Config::new(Method::Bloop).ema(0.3).lambda(0.8),
        Config::new(Method::DynamicBarrier).ema(0.6).lambda(2.0).order(bloop::Order::ProjectFirst),
        Config::new(Method::PcGrad).ema(0.2).lambda(0.5),
        Config::new(Method::Mixed).lambda(0.5),
    ];
    let arrangements = [
        (Arrangement::Pool { in_place: false }, 16),
        (Arrangement::Flat { in_place: true }, 16),
        (Arrangement::PerLeaf, 16),
        (Arrangement::ManyPages { pages: 6 }, 4),
    ];
    for (i, config) in configs.into_iter().enumerate() {
        for (j, (arrangement, max_slots)) in arrangements.into_iter().enumerate() {
            let seed = 3000 + 10 * i as u64 + j as u64;
            let mut directions = Vec::new();
            let mut tiles = Vec::new();
            for tile_len in [256, 1000, TILE_LEN as u32, CPU_TILE_LEN as u32] {
                let kernels = kernels_with(Some(tile_len), max_slots);
                // The same seed: the same layout, placement and gradients for every length.
                let draw = |rng: &mut SplitMix64| {
                    let count = 3 + below(rng, 10) as usize;
                    layout(rng, count)
                };
                let context = format!("tile_len {tile_len}");
                let (bindings, direction) =
                    common::check_seeded(&kernels, seed, config, arrangement, draw, BOUND, &context);
                tiles.push(bindings.tile_count());
                directions.push(direction);
            }
            // Longer tiles, fewer of them (never more).
            assert!(tiles.windows(2).all(|w| w[0] >= w[1]), "tiles {tiles:?}; seed {seed}, {arrangement:?}");
            assert!(tiles[0] > tiles[3], "tiles {tiles:?}; seed {seed}, {arrangement:?}");
            for d in &directions[1..] {
                let apart = relative_error(&directions[0], d);
                assert!(apart <= BOUND, "tile lengths {apart} apart; seed {seed}, {arrangement:?}, {config:?}");
            }
        }
    }
}
