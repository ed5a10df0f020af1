//! A bounded run of the fuzz targets' bodies on mutated inputs (the open-ended run is
//! `fuzz/run.sh`, with cargo fuzz): checkpoint parsing and layout validation refuse bad input
//! and never panic.

use bloop::fuzzing::{checkpoint_bytes, inconsistent_checkpoint, layout_bytes, restore_checkpoint};
use bloop::rng::SplitMix64;
use bloop::{Checkpoint, Config, Layout, Method};

fn seeds() -> Vec<Vec<u8>> {
    let layout = Layout::from_shapes([("w", vec![3u64, 4]), ("b", vec![5])]).unwrap();
    let adam = bloop::Optimizer::adamw(1e-3);
    [(Method::Bloop, None), (Method::PcGrad, None), (Method::Mixed, None), (Method::Bloop, Some(adam))]
        .into_iter()
        .map(|(method, optimizer)| {
            let config = Config { optimizer, ..Config::new(method) };
            let ema = |on: bool| if on { vec![vec![0.5; 12], vec![-1.0; 5]] } else { vec![] };
            let optimizer = optimizer.map(|_| bloop::checkpoint::OptimizerCheckpoint {
                learning_rate: 0.25,
                step: 7,
                tensors: vec![ema(true), ema(true)],
            });
            Checkpoint {
                config,
                layout: layout.clone(),
                steps: 9,
                skipped_steps: 2,
                main_ema: ema(method.has_main_ema()),
                aux_ema: ema(method.has_aux_ema()),
                optimizer,
                level_emas: vec![],
            }
            .to_bytes()
            .unwrap()
        })
        .collect()
}

fn mutate(rng: &mut SplitMix64, seed: &[u8]) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    // The JSON header is where the structure is: aim most mutations at it.
    let header = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    for _ in 0..1 + rng.next_u64() % 4 {
        if bytes.is_empty() {
            break;
        }
        let limit = if rng.next_u64().is_multiple_of(4) { bytes.len() } else { header.min(bytes.len()) };
        let i = (rng.next_u64() as usize) % limit;
        match rng.next_u64() % 5 {
            0 => bytes[i] ^= 1 << (rng.next_u64() % 8),
            1 => {
                let alphabet = b"{}[]\":,0123456789-eE.truefalsenul";
                bytes[i] = alphabet[(rng.next_u64() as usize) % alphabet.len()];
            }
            2 => bytes.truncate(i),
            3 => bytes.insert(i, rng.next_u64() as u8),
            _ => {
                bytes.remove(i);
            }
        }
    }
    bytes
}

#[test]
fn checkpoint_parsing_survives_mutated_files() {
    let seeds = seeds();
    for seed in &seeds {
        checkpoint_bytes(seed);
        assert!(Checkpoint::from_bytes(seed).is_ok());
    }
    let mut rng = SplitMix64::new(2024);
    let mut refused = 0;
    for i in 0..6000 {
        let bytes = mutate(&mut rng, &seeds[i % seeds.len()]);
        refused += usize::from(Checkpoint::from_bytes(&bytes).is_err());
        checkpoint_bytes(&bytes);
    }
    // The mutations do reach the checks: most damaged files are refused.
    assert!(refused > 3000, "only {refused} of 6000 mutated files refused");
}

#[test]
fn layout_validation_survives_random_bytes() {
    let mut rng = SplitMix64::new(7);
    for _ in 0..20000 {
        let len = (rng.next_u64() % 64) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        layout_bytes(&bytes);
    }
}

/// Random bytes drive the hand-built checkpoints, biased towards well-formed ones so that
/// both sides run: most are refused, some accepted.
#[test]
fn restore_checks_survive_hand_built_checkpoints() {
    let mut rng = SplitMix64::new(31);
    let mut accepted = 0;
    for _ in 0..4000 {
        let len = (rng.next_u64() % 512) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        // Mostly small bytes: they read as "one vector per leaf, of its length", plain values.
        for b in bytes.iter_mut().skip(1) {
            if !rng.next_u64().is_multiple_of(8) {
                *b &= 0x3c;
            }
        }
        accepted += usize::from(restore_checkpoint(&bytes));
    }
    assert!((40..3000).contains(&accepted), "{accepted} of 4000 accepted");
}

#[test]
fn inconsistent_checkpoint_files_are_refused_without_panicking() {
    let mut rng = SplitMix64::new(32);
    let mut accepted = 0;
    for _ in 0..3000 {
        let len = (rng.next_u64() % 24) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        accepted += usize::from(inconsistent_checkpoint(&bytes));
    }
    // Most edits break the file; a few (a counter within range, a cast that keeps the type)
    // leave it valid.
    assert!(accepted < 1500, "{accepted} of 3000 accepted");
}
