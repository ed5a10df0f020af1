//! BLOOP gradient surgery on the GPU with wgpu.
//!
//! A training step has a main loss and an auxiliary loss. BLOOP (Hsieh et al., "Careful with
//! that Scalpel: Improving Gradient Surgery with an EMA", ICML 2024) follows
//! `g_main + lambda * (g_aux - r * e)`, where `e` is an exponential moving average of
//! `g_main` and `r = <e, g_aux> / (<e, e> + eps)`: the auxiliary gradient acts only
//! orthogonally to where the main loss is heading. The dynamic barrier, PCGrad with EMAs and
//! plain mixing come along for comparison.
//!
//! The work runs as WGSL compute shaders over device-resident buffers, with one global
//! projection over all of a model's parameter leaves. Steps are recorded into the caller's
//! `wgpu::CommandEncoder`; the library never submits or waits on the hot path.
//!
//! # Layers
//!
//! Each module uses only modules of the layers below it (`tests/layering.rs` checks that the
//! imports form no cycle):
//!
//! 1. Types and errors: [`dtype`], [`role`], [`error`], [`rng`], [`context`] (the device).
//! 2. What a step is: [`layout`] (leaves and where they live), [`optimizer`] (the update rule
//!    a step may fuse), [`config`] (the method and its hyperparameters), [`shaders`] (the WGSL
//!    variants a config needs), [`scalars`] (what a step leaves on the GPU),
//!    [`reference`](mod@reference) (the same math in f64 on the host).
//! 3. Running it: [`kernels`] (compiled pipelines), the private planner and validator,
//!    [`pool`], [`readback`], [`checkpoint`] (the file format).
//! 4. [`state`]: the averages of one model and the steps recorded over them.
//! 5. Past one GPU: [`collective`] (the few operations between ranks) and [`sharded`] (the
//!    step over one rank's shard of the leaves, each rank keeping its own averages, with one
//!    small exchange of sums per step; MPI in the workspace's `bloop-mpi` crate).
//! 6. Reading results while training: [`diagnostics`].
//!
//! Integrations live in crates of their own that depend on this one. The golden-case runner and
//! the fuzz targets' bodies (`conformance`, `fuzzing`) are test scaffolding behind the
//! `testing` feature, not part of the stable API.
//!
//! ```no_run
//! use bloop::{BloopState, Config, EmaInits, GpuContext, GradientPool, Kernels, Layout, Method};
//! # fn main() -> bloop::Result<()> {
//! let gpu = GpuContext::from_env()?;
//! let kernels = Kernels::new(&gpu.device);
//! let layout = Layout::new([("weight", 300u64), ("bias", 10)])?;
//! let config = Config::new(Method::Bloop).ema(0.01).lambda(0.5);
//! let mut state = BloopState::new(&kernels, &gpu.queue, &layout, config, EmaInits::zeros())?;
//! let pool = GradientPool::new(&gpu.device, &layout, false)?;
//! let bindings = state.bind_pool(&pool)?;
//! let mut encoder = gpu.device.create_command_encoder(&Default::default());
//! // ... record the kernels that write pool.main(i) and pool.aux(i) ...
//! state.record_step(&mut encoder, &bindings)?;
//! // ... record the optimizer reading pool.output(i) ...
//! gpu.queue.submit([encoder.finish()]);
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

pub mod checkpoint;
pub mod collective;
pub mod config;
#[cfg(feature = "testing")]
pub mod conformance;
pub mod context;
pub mod diagnostics;
pub mod dtype;
pub mod error;
#[cfg(feature = "testing")]
pub mod fuzzing;
pub mod hierarchy;
pub mod kernels;
pub mod layout;
pub mod optimizer;
mod plan;
pub mod pool;
pub mod readback;
pub mod reference;
pub mod rng;
pub mod role;
pub mod scalars;
pub mod shaders;
pub mod sharded;
pub mod state;
mod validate;

pub use checkpoint::Checkpoint;
pub use collective::{Collective, SingleRank, ThreadGroup};
pub use config::{Config, EmaInit, EmaInits, Method, Order, MAX_LEVELS};
pub use context::{GpuContext, BINDING_ARRAY_FEATURES};
pub use diagnostics::{DiagnosticsRing, StepDiagnostics};
pub use dtype::{DType, ElementTypes};
pub use error::{Error, Result};
pub use kernels::{KernelOptions, Kernels};
pub use kernels::{CPU_TILE_LEN, TILE_LEN};
pub use layout::{Layout, Leaf, LeafBuffer, Role};
pub use optimizer::{OptKind, Optimizer, Rule};
pub use pool::GradientPool;
#[cfg(not(target_arch = "wasm32"))]
pub use readback::read_leaves;
pub use readback::read_leaves_async;
pub use reference::{ReferenceOptimizer, ReferenceState};
pub use sharded::{balanced_shards, GlobalSums, ShardedBindings, ShardedState};
pub use state::{BloopState, EmaRole, ExternalGradients, Output, StepBindings};

/// The README's and the guide's Rust examples, compiled as doc tests so they cannot drift from
/// the API (`no_run`: they need a GPU). The burn and MPI pages are the adapters' crates' own.
#[cfg(doctest)]
mod guide {
    #[doc = include_str!("../README.md")]
    struct Readme;
    #[doc = include_str!("../docs/buffers.md")]
    struct Buffers;
    #[doc = include_str!("../docs/methods.md")]
    struct Methods;
    #[doc = include_str!("../docs/half-precision.md")]
    struct HalfPrecision;
    #[doc = include_str!("../docs/optimizer.md")]
    struct Optimizer;
    #[doc = include_str!("../docs/guard-diagnostics-checkpoints.md")]
    struct GuardDiagnosticsCheckpoints;
}
