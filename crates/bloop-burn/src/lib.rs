//! BLOOP gradient surgery for [burn](https://burn.dev) models on wgpu.
//!
//! [`BurnBloop`] is built from a module (its float parameters, in visiting order, become the
//! layout's leaves, named by their module paths) and a [`bloop::Config`]. Each step,
//! [`BurnBloop::combine`] takes the main and auxiliary [`GradientsParams`] and returns the
//! combined ones, which any burn optimizer then steps with:
//!
//! ```ignore
//! let grads_main = GradientsParams::from_grads(main_loss.backward(), &model);
//! let grads_aux = GradientsParams::from_grads(aux_loss.backward(), &model);
//! let grads = bloop.combine(grads_main, grads_aux)?;
//! model = optimizer.step(lr, model, grads);
//! ```
//!
//! The combination runs on the GPU, in place on burn's own gradient buffers, through the
//! library's external path ([`bloop::BloopState::bind_external`]): no gradient is copied to the
//! host. What the adapter assumes:
//!
//! - burn runs on the **same wgpu device and queue** the adapter was given (share one with
//!   `Device::wgpu_options().setup(..)`, or take burn's own with `init_with_setup()`).
//! - Gradients are **f32**.
//! - A gradient that is not contiguous is first made contiguous (a copy burn makes on the GPU);
//!   a gradient whose storage overlaps another gradient's is copied before anything is written
//!   in place. The gradient returned for such a parameter is the copy.
//! - A parameter the **aux loss does not touch** (no entry in the aux gradients) counts as a
//!   zero aux gradient; one the main loss does not touch counts as a zero main gradient (and
//!   gets a combined gradient in the result all the same).
//! - burn's pending work is flushed before the adapter submits its own, and every gradient
//!   handle is held until after that submit.
//! - With burn's `fusion` feature on, turn on this crate's `fusion` feature too (the two
//!   disagreeing is a compile error, not a silent fault).

#![deny(missing_docs)]

use std::sync::Arc;

use burn::backend::wgpu::CubeTensor;
use burn::backend::{BackendTypes, Wgpu};
use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{DType as BurnDType, Device, Tensor};
use burn_cubecl::cubecl::wgpu::{AutoCompiler, WgpuResource, WgpuServer};
use cubecl_runtime::storage::ManagedResource;

use bloop::{BloopState, ExternalGradients, Kernels, Layout, LeafBuffer, Output, StepBindings};
pub use bloop::{Checkpoint, Config, EmaInit, EmaInits, Method};

/// burn's float tensor primitive on wgpu (a fusion handle when burn's `fusion` is on).
type Primitive = <Wgpu as BackendTypes>::FloatTensorPrimitive;

/// Everything the adapter can refuse or fail at.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The library refused or failed (config, layout, binding, device, checkpoint).
    #[error(transparent)]
    Bloop(#[from] bloop::Error),
    /// The module has no float parameter.
    #[error("the module has no float parameters")]
    NoParameters,
    /// A parameter's rank is beyond what the adapter dispatches on.
    #[error("parameter `{name}` has rank {rank}; the adapter handles ranks 1 to {MAX_RANK}")]
    Rank {
        /// The parameter's path.
        name: String,
        /// Its rank.
        rank: usize,
    },
    /// A gradient is not a wgpu tensor of burn's cubecl backend.
    #[error("gradient of `{name}` is not a burn wgpu tensor: {why}")]
    NotWgpu {
        /// The parameter's path.
        name: String,
        /// What burn said.
        why: String,
    },
    /// A gradient is not f32.
    #[error("gradient of `{name}` is {dtype}; the adapter needs f32")]
    DType {
        /// The parameter's path.
        name: String,
        /// The gradient's element type.
        dtype: String,
    },
    /// A gradient has another element count than its parameter.
    #[error("gradient of `{name}` ({role}) has {got} elements; the parameter has {expected}")]
    Shape {
        /// The parameter's path.
        name: String,
        /// `main` or `aux`.
        role: &'static str,
        /// The parameter's element count.
        expected: u64,
        /// The gradient's.
        got: u64,
    },
    /// Even after a copy, a gradient's storage is not one dense range the adapter can bind.
    #[error("gradient of `{name}` ({role}): {why}")]
    Storage {
        /// The parameter's path.
        name: String,
        /// `main` or `aux`.
        role: &'static str,
        /// What is wrong.
        why: String,
    },
    /// burn or cubecl failed (flush, resource lookup).
    #[error("burn: {0}")]
    Burn(String),
    /// A gradient's rank is not its parameter's (burn itself would panic on it).
    #[error("gradient of `{name}` ({role}) has rank {}; the parameter has rank {expected}", got.map_or("other than 1 to 6".to_string(), |r| r.to_string()))]
    GradientRank {
        /// The parameter's path.
        name: String,
        /// `main` or `aux`.
        role: &'static str,
        /// The parameter's rank.
        expected: usize,
        /// The gradient's rank, if it is one the adapter probes (1 to [`MAX_RANK`]).
        got: Option<usize>,
    },
    /// A gradient's shape is not its parameter's (a transposed gradient has the right number
    /// of elements in the wrong order).
    #[error("gradient of `{name}` ({role}) has shape {got:?}; the parameter has shape {expected:?}")]
    GradientShape {
        /// The parameter's path.
        name: String,
        /// `main` or `aux`.
        role: &'static str,
        /// The parameter's shape.
        expected: Vec<usize>,
        /// The gradient's.
        got: Vec<usize>,
    },
    /// None of the gradients given belongs to a parameter of the module: they were taken for
    /// another model (`GradientsParams::from_grads(.., &other)`), or no loss reached the module.
    /// Going on would combine zeros and still move the averages.
    #[error(
        "none of the {given} {role} gradients belongs to a parameter of this module \
         (gradients of another model, or a loss that reaches none of its parameters)"
    )]
    ForeignGradients {
        /// `main` or `aux`.
        role: &'static str,
        /// How many gradients were given.
        given: usize,
    },
}

/// The adapter's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// Highest parameter rank the adapter handles.
pub const MAX_RANK: usize = 6;

/// Runs `$body` with `const $d: usize` bound to `$rank` (1..=MAX_RANK).
macro_rules! with_rank {
    ($rank:expr, $d:ident => $body:expr) => {
        match $rank {
            1 => {
                const $d: usize = 1;
                $body
            }
            2 => {
                const $d: usize = 2;
                $body
            }
            3 => {
                const $d: usize = 3;
                $body
            }
            4 => {
                const $d: usize = 4;
                $body
            }
            5 => {
                const $d: usize = 5;
                $body
            }
            6 => {
                const $d: usize = 6;
                $body
            }
            _ => unreachable!("ranks are checked when the adapter is built"),
        }
    };
}

/// One float parameter of the module.
#[derive(Clone, Debug)]
pub struct ParamLeaf {
    /// burn's id of the parameter.
    pub id: ParamId,
    /// Its module path (`layers.0.weight`).
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// The burn device it lives on.
    pub device: Device,
}

impl ParamLeaf {
    fn len(&self) -> u64 {
        self.shape.iter().product::<usize>() as u64
    }
}

/// Collects the module's float parameters with their paths.
struct Collector {
    path: Vec<String>,
    leaves: Vec<ParamLeaf>,
}

impl ModuleVisitor for Collector {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.leaves.push(ParamLeaf {
            id: param.id,
            name: self.path.join("."),
            shape: param.lazy_shape().to_vec(),
            device: param.lazy_device(),
        });
    }
}

/// The float parameters of `module` in visiting order, named by their paths.
pub fn param_leaves<M: Module>(module: &M) -> Vec<ParamLeaf> {
    let mut collector = Collector { path: Vec::new(), leaves: Vec::new() };
    module.visit(&mut collector);
    collector.leaves
}

/// The current values of the module's float parameters (read back to the host), one vector per
/// leaf, for averages that start as a copy of the parameters (`EmaInit::Values`).
pub fn param_values<M: Module>(module: &M) -> Vec<Vec<f32>> {
    struct Reader(Vec<Vec<f32>>);
    impl ModuleVisitor for Reader {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let data = param.val().into_data().convert::<f32>();
            self.0.push(data.try_into_vec_as::<f32>().unwrap_or_default());
        }
    }
    let mut reader = Reader(Vec::new());
    module.visit(&mut reader);
    reader.0
}

/// A gradient taken out of burn, with everything that must stay alive until the submit.
struct Held {
    /// What goes back to burn (the fusion handle with fusion, else the cubecl tensor).
    primitive: Primitive,
    /// The cubecl tensor the buffer was read from (keeps the allocation alive).
    cube: CubeTensor,
    /// The storage binding (keeps the allocation from being freed or moved).
    resource: ManagedResource<WgpuResource>,
}

impl Held {
    fn leaf(&self, len: u64) -> LeafBuffer {
        let r = self.resource.resource();
        LeafBuffer::new(&r.buffer, r.offset, len)
    }
}

/// The adapter: a [`BloopState`] over a burn module's parameters.
pub struct BurnBloop {
    leaves: Vec<ParamLeaf>,
    state: BloopState,
    device: wgpu::Device,
    queue: wgpu::Queue,
    /// Zeros standing in for missing aux gradients (grown on demand).
    zeros: Option<wgpu::Buffer>,
    /// Bindings of recent steps, by the (buffer, offset) of every main and aux leaf.
    cache: Vec<(Vec<(wgpu::Buffer, u64)>, StepBindings)>,
    cache_hits: u64,
    binds: u64,
}

impl std::fmt::Debug for BurnBloop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BurnBloop").field("leaves", &self.leaves.len()).field("state", &self.state).finish()
    }
}

/// How many step bindings the adapter keeps for reuse.
const CACHE_SIZE: usize = 8;

impl BurnBloop {
    /// An adapter over `module`'s float parameters on the wgpu `device` and `queue` burn runs
    /// on. `kernels` may be shared by several adapters on the same device.
    pub fn new<M: Module>(
        module: &M,
        config: Config,
        kernels: &Arc<Kernels>,
        queue: &wgpu::Queue,
        inits: EmaInits,
    ) -> Result<BurnBloop> {
        let leaves = param_leaves(module);
        if leaves.is_empty() {
            return Err(Error::NoParameters);
        }
        for leaf in &leaves {
            if leaf.shape.is_empty() || leaf.shape.len() > MAX_RANK {
                return Err(Error::Rank { name: leaf.name.clone(), rank: leaf.shape.len() });
            }
        }
        let layout = Layout::new(leaves.iter().map(|l| (l.name.clone(), l.len())))?;
        let state = BloopState::new(kernels, queue, &layout, config, inits)?;
        Ok(BurnBloop {
            leaves,
            state,
            device: kernels.device().clone(),
            queue: queue.clone(),
            zeros: None,
            cache: Vec::new(),
            cache_hits: 0,
            binds: 0,
        })
    }

    /// The parameters, in leaf order.
    pub fn leaves(&self) -> &[ParamLeaf] {
        &self.leaves
    }

    /// The library state (averages, config, step count).
    pub fn state(&self) -> &BloopState {
        &self.state
    }

    /// The library state, mutable (for `set_config`, `write_ema`, diagnostics).
    pub fn state_mut(&mut self) -> &mut BloopState {
        &mut self.state
    }

    /// `(steps that reused cached bindings, steps that built new ones)`.
    pub fn binding_stats(&self) -> (u64, u64) {
        (self.cache_hits, self.binds)
    }

    /// The state as a library checkpoint (blocks until the GPU is idle).
    pub fn checkpoint(&self) -> Result<Checkpoint> {
        Ok(self.state.checkpoint()?)
    }

    /// Writes the checkpoint to a safetensors file.
    pub fn save_checkpoint(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        Ok(self.state.save_checkpoint(path)?)
    }

    /// Takes the averages and counters of a checkpoint of this module (same leaves, same config).
    pub fn restore(&mut self, checkpoint: &Checkpoint) -> Result<()> {
        Ok(self.state.restore(checkpoint)?)
    }

    /// Reads a checkpoint file written by [`BurnBloop::save_checkpoint`] and restores it.
    pub fn load_checkpoint(&mut self, path: impl AsRef<std::path::Path>) -> Result<()> {
        Ok(self.state.load_checkpoint(path)?)
    }

    /// One step: combines the main and aux gradients of every parameter in place on burn's
    /// buffers and returns them as the gradients for the optimizer. Gradients of tensors that
    /// are not parameters of the module are dropped.
    ///
    /// Refused before anything is taken or recorded, the state left as it was: a gradient whose
    /// rank or shape is not its parameter's ([`Error::GradientRank`], [`Error::GradientShape`]),
    /// main gradients none of which belongs to the module, and aux gradients none of which does
    /// when some are given ([`Error::ForeignGradients`]). An empty aux set is a loss that
    /// touches no parameter: zero aux gradients. The rank check asks burn for the gradient at
    /// each rank under `catch_unwind` (burn's container panics on a rank it was not stored
    /// with), so it needs the default `panic = "unwind"`.
    pub fn combine(&mut self, mut main: GradientsParams, mut aux: GradientsParams) -> Result<GradientsParams> {
        if check_gradients(&self.leaves, &main, "main")? == 0 {
            return Err(Error::ForeignGradients { role: "main", given: main.len() });
        }
        if check_gradients(&self.leaves, &aux, "aux")? == 0 && !aux.is_empty() {
            return Err(Error::ForeignGradients { role: "aux", given: aux.len() });
        }
        let n = self.leaves.len();
        let mut main_prims = Vec::with_capacity(n);
        let mut aux_prims: Vec<Option<Primitive>> = Vec::with_capacity(n);
        for leaf in &self.leaves {
            let m = match take(&mut main, leaf)? {
                Some(p) => p,
                None => zeros_primitive(leaf)?,
            };
            main_prims.push(m);
            aux_prims.push(take(&mut aux, leaf)?);
        }

        // Resolve every gradient to its cubecl tensor; copy the ones that are not contiguous.
        let mut main_cubes: Vec<(Primitive, CubeTensor)> = Vec::with_capacity(n);
        for (leaf, p) in self.leaves.iter().zip(main_prims) {
            main_cubes.push(resolve(leaf, p, "main")?);
        }
        let mut aux_cubes: Vec<Option<(Primitive, CubeTensor)>> = Vec::with_capacity(n);
        for (leaf, p) in self.leaves.iter().zip(aux_prims) {
            aux_cubes.push(match p {
                Some(p) => Some(resolve(leaf, p, "aux")?),
                None => None,
            });
        }

        // Storage of every gradient; the managed resources hold the allocations in place.
        let mut held_main = Vec::with_capacity(n);
        for (leaf, (p, cube)) in self.leaves.iter().zip(main_cubes) {
            held_main.push(hold(leaf, p, cube, "main")?);
        }
        let mut held_aux = Vec::with_capacity(n);
        for (leaf, a) in self.leaves.iter().zip(aux_cubes) {
            held_aux.push(match a {
                Some((p, cube)) => Some(hold(leaf, p, cube, "aux")?),
                None => None,
            });
        }

        // A main gradient is overwritten: it may share storage with no other gradient, so one
        // that does is copied first (by burn, into fresh storage).
        for i in 0..n {
            if main_shares_storage(i, &self.leaves, &held_main, &held_aux) {
                let leaf = &self.leaves[i];
                let copied = copy_primitive(leaf, held_main[i].primitive.clone())?;
                let (p, cube) = resolve(leaf, copied, "main")?;
                held_main[i] = hold(leaf, p, cube, "main")?;
            }
        }

        let zero_len =
            self.leaves.iter().zip(&held_aux).filter(|(_, a)| a.is_none()).map(|(l, _)| l.len()).max().unwrap_or(0);
        self.ensure_zeros(zero_len);

        let main_leaves: Vec<LeafBuffer> = self.leaves.iter().zip(&held_main).map(|(l, h)| h.leaf(l.len())).collect();
        let aux_leaves: Vec<LeafBuffer> = self
            .leaves
            .iter()
            .zip(&held_aux)
            .map(|(l, h)| match h {
                Some(h) => h.leaf(l.len()),
                None => LeafBuffer::new(self.zeros.as_ref().expect("zeros allocated above"), 0, l.len()),
            })
            .collect();

        let key: Vec<(wgpu::Buffer, u64)> =
            main_leaves.iter().chain(&aux_leaves).map(|l| (l.buffer.clone(), l.offset)).collect();
        let index = match self.cache.iter().position(|(k, _)| *k == key) {
            Some(i) => {
                self.cache_hits += 1;
                i
            }
            None => {
                let gradients = ExternalGradients { main: &main_leaves, aux: &aux_leaves, output: Output::InPlace };
                let bindings = self.state.bind_external(&gradients)?;
                self.binds += 1;
                if self.cache.len() == CACHE_SIZE {
                    self.cache.remove(0);
                }
                self.cache.push((key, bindings));
                self.cache.len() - 1
            }
        };

        // burn's pending work (the backward passes, the copies above) goes on the queue first.
        // One client per device; its flush submits this thread's stream, where the gradients
        // were made.
        held_main[0].cube.client.flush().map_err(|e| Error::Burn(format!("flush: {e:?}")))?;
        let mut encoder =
            self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("bloop-burn") });
        self.state.record_step(&mut encoder, &self.cache[index].1)?;
        self.queue.submit([encoder.finish()]);

        // Only now do the handles go back to burn.
        drop(held_aux);
        let mut out = GradientsParams::new();
        for (leaf, h) in self.leaves.iter().zip(held_main) {
            let Held { primitive, cube, resource } = h;
            drop(resource);
            drop(cube);
            with_rank!(leaf.shape.len(), D => out.register::<D>(leaf.id, Tensor::<D>::from_primitive::<Wgpu>(primitive)));
        }
        Ok(out)
    }

    fn ensure_zeros(&mut self, len: u64) {
        if len == 0 {
            return;
        }
        let bytes = len * 4;
        if self.zeros.as_ref().is_some_and(|z| z.size() >= bytes) {
            return;
        }
        // wgpu zero-initialises new buffers.
        self.zeros = Some(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("bloop-burn zero aux gradients"),
            size: bytes.max(4),
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        }));
        self.cache.clear();
    }
}

thread_local! {
    /// Set while [`probe`] asks burn for a gradient at a rank it may not have.
    static PROBING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The gradient of `id` in `grads` if it is stored with rank `D`: `Ok(None)` when there is
/// none, `Err(())` when there is one of another rank (burn's container panics then; the panic
/// is caught, and kept out of the panic hook's output).
fn probe<const D: usize>(grads: &GradientsParams, id: ParamId) -> std::result::Result<Option<Tensor<D>>, ()> {
    static QUIET_HOOK: std::sync::Once = std::sync::Once::new();
    QUIET_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !PROBING.with(std::cell::Cell::get) {
                previous(info);
            }
        }));
    });
    PROBING.with(|p| p.set(true));
    let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| grads.get::<D>(id)));
    PROBING.with(|p| p.set(false));
    got.map_err(|_| ())
}

/// Checks every parameter's gradient in `grads` (rank and shape) without taking any, and
/// returns how many parameters have one.
fn check_gradients(leaves: &[ParamLeaf], grads: &GradientsParams, role: &'static str) -> Result<usize> {
    let mut found = 0;
    for leaf in leaves {
        let rank = leaf.shape.len();
        let dims = with_rank!(rank, D => probe::<D>(grads, leaf.id).map(|t| t.map(|t| t.dims().to_vec())));
        match dims {
            Ok(None) => {}
            Ok(Some(dims)) if dims == leaf.shape => found += 1,
            Ok(Some(got)) => {
                return Err(Error::GradientShape { name: leaf.name.clone(), role, expected: leaf.shape.clone(), got });
            }
            Err(()) => {
                let got = (1..=MAX_RANK).find(|&r| r != rank && with_rank!(r, D => probe::<D>(grads, leaf.id).is_ok()));
                return Err(Error::GradientRank { name: leaf.name.clone(), role, expected: rank, got });
            }
        }
    }
    Ok(found)
}

/// Takes the gradient of `leaf` out of `grads` as burn's primitive.
fn take(grads: &mut GradientsParams, leaf: &ParamLeaf) -> Result<Option<Primitive>> {
    let primitive = with_rank!(leaf.shape.len(), D => match grads.remove::<D>(leaf.id) {
        None => None,
        Some(t) => Some(t.try_into_primitive::<Wgpu>().map_err(|e| Error::NotWgpu {
            name: leaf.name.clone(),
            why: format!("{e:?}"),
        })?),
    });
    Ok(primitive)
}

/// A zero gradient for a parameter the main loss does not touch.
fn zeros_primitive(leaf: &ParamLeaf) -> Result<Primitive> {
    with_rank!(leaf.shape.len(), D => {
        let dims: [usize; D] = leaf.shape.clone().try_into().expect("rank checked");
        Tensor::<D>::zeros(dims, &leaf.device.clone().inner()).try_into_primitive::<Wgpu>().map_err(|e| Error::NotWgpu {
            name: leaf.name.clone(),
            why: format!("{e:?}"),
        })
    })
}

/// A copy of a gradient in fresh, contiguous storage, made by burn (`zeros + g`, so the sum
/// lands in the new buffer and never in the shared one). The sum is taken over flat views:
/// burn's fused element-wise kernels give their output the strides of an input of the same
/// shape, so a transposed gradient added as it is would come back transposed.
fn copy_primitive(leaf: &ParamLeaf, primitive: Primitive) -> Result<Primitive> {
    with_rank!(leaf.shape.len(), D => {
        let dims: [usize; D] = leaf.shape.clone().try_into().expect("rank checked");
        let n = leaf.len() as usize;
        let g = Tensor::<D>::from_primitive::<Wgpu>(primitive);
        let copy = Tensor::<1>::zeros([n], &leaf.device.clone().inner()).add(g.reshape([n])).reshape(dims);
        copy.try_into_primitive::<Wgpu>().map_err(|e| Error::NotWgpu { name: leaf.name.clone(), why: format!("{e:?}") })
    })
}

/// The cubecl tensor behind a primitive; non-contiguous gradients are copied first.
fn resolve(leaf: &ParamLeaf, primitive: Primitive, role: &'static str) -> Result<(Primitive, CubeTensor)> {
    let (primitive, cube) = to_cube(primitive);
    if cube.dtype != BurnDType::F32 {
        return Err(Error::DType { name: leaf.name.clone(), dtype: format!("{:?}", cube.dtype) });
    }
    let got = cube.meta.shape().num_elements() as u64;
    if got != leaf.len() {
        return Err(Error::Shape { name: leaf.name.clone(), role, expected: leaf.len(), got });
    }
    if is_dense(&cube) {
        return Ok((primitive, cube));
    }
    drop(cube);
    let copied = copy_primitive(leaf, primitive)?;
    let (primitive, cube) = to_cube(copied);
    if !is_dense(&cube) {
        return Err(Error::Storage {
            name: leaf.name.clone(),
            role,
            why: format!("still not contiguous after a copy (strides {:?})", cube.meta.strides()),
        });
    }
    Ok((primitive, cube))
}

/// Contiguous, row-major, no broadcast strides.
fn is_dense(cube: &CubeTensor) -> bool {
    let shape = cube.meta.shape();
    let strides = cube.meta.strides();
    let mut expected = 1usize;
    for (&dim, &stride) in shape.iter().zip(strides.iter()).rev() {
        if dim != 1 && stride != expected {
            return false;
        }
        expected *= dim;
    }
    true
}

#[cfg(not(feature = "fusion"))]
fn to_cube(primitive: Primitive) -> (Primitive, CubeTensor) {
    let cube = primitive.clone();
    (primitive, cube)
}

#[cfg(feature = "fusion")]
fn to_cube(primitive: Primitive) -> (Primitive, CubeTensor) {
    // A clone keeps the fusion tensor registered: resolving the only reference would hand its
    // storage over to the resolved tensor.
    let cube = primitive.client.resolve_tensor_float::<burn_cubecl::CubeBackend>(primitive.clone());
    (primitive, cube)
}

/// Whether main gradient `i`'s bytes overlap those of any other gradient of the step.
fn main_shares_storage(i: usize, leaves: &[ParamLeaf], main: &[Held], aux: &[Option<Held>]) -> bool {
    let mine = main[i].leaf(leaves[i].len());
    let overlaps = |other: LeafBuffer| {
        mine.buffer == other.buffer && {
            let (a, b) = (mine.byte_range(), other.byte_range());
            a.start < b.end && b.start < a.end
        }
    };
    main.iter().enumerate().any(|(j, h)| j != i && overlaps(h.leaf(leaves[j].len())))
        || aux.iter().enumerate().any(|(j, h)| h.as_ref().is_some_and(|h| overlaps(h.leaf(leaves[j].len()))))
}

/// Looks up the wgpu buffer and offset of a gradient and holds the allocation.
fn hold(leaf: &ParamLeaf, primitive: Primitive, cube: CubeTensor, role: &'static str) -> Result<Held> {
    let resource = cube
        .client
        .get_resource::<WgpuServer<AutoCompiler>>(cube.handle.clone())
        .map_err(|e| Error::NotWgpu { name: leaf.name.clone(), why: format!("{e:?}") })?;
    let r = resource.resource();
    if r.size < leaf.len() * 4 {
        return Err(Error::Storage {
            name: leaf.name.clone(),
            role,
            why: format!("its storage holds {} bytes, the parameter needs {}", r.size, leaf.len() * 4),
        });
    }
    Ok(Held { primitive, cube, resource })
}

/// The guide's burn page, whose example compiles as a doc test (`no_run`: it needs a GPU).
#[cfg(doctest)]
#[doc = include_str!("../../../docs/burn.md")]
struct Guide;
