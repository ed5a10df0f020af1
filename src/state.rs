//! The per-model state: EMA buffers, constants, and recording of steps.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::checkpoint::{Checkpoint, OptimizerCheckpoint};
use crate::config::{Config, EmaInit, EmaInits};
use crate::context::gpu_scope;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::kernels::{slot, Kernels, VariantFlags, VariantKernels};
use crate::layout::{Layout, LeafBuffer, Packing, Role};
use crate::plan::{Grouping, Plan, RoleLeaves, SlotBinding, PARTIAL_BYTES};
use crate::pool::GradientPool;
use crate::readback;
use crate::scalars::{StepDiagnostics, SCALARS_BYTES};
use crate::shaders::{Kind, Stage, Variant};
use crate::validate;

/// Usage of the EMA buffers: read and written by the kernels, copied for checkpoints.
const EMA_USAGE: wgpu::BufferUsages =
    wgpu::BufferUsages::STORAGE.union(wgpu::BufferUsages::COPY_SRC).union(wgpu::BufferUsages::COPY_DST);

static NEXT_STATE_ID: AtomicU64 = AtomicU64::new(1);

/// The most distinct user buffers a step checks for being mapped or destroyed each time it is
/// recorded (binding checks them all, once).
pub const RECORD_CHECKED_BUFFERS: usize = 256;

/// Which average of a state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EmaRole {
    /// The EMA of the main gradient (every method but `mixed`).
    Main,
    /// The EMA of the auxiliary gradient (`pcgrad` only).
    Aux,
    /// The average `e_j` of loss j of a hierarchy (`Level(0)` is `Main`).
    Level(usize),
}

impl EmaRole {
    fn role(self) -> Role {
        match self {
            EmaRole::Main => Role::MainEma,
            EmaRole::Aux => Role::AuxEma,
            EmaRole::Level(j) => Role::LevelEma(j),
        }
    }
}

/// Where the output of a step over external buffers goes.
#[derive(Clone, Copy, Debug)]
pub enum Output<'a> {
    /// Overwrite the main gradient with the direction.
    InPlace,
    /// One leaf buffer per leaf, disjoint from every input.
    Buffers(&'a [LeafBuffer]),
    /// Write no direction: only the optimizer's update is wanted (states with an optimizer).
    Discard,
}

/// Gradients in buffers the user owns: per leaf a buffer, a byte offset and a length, in any
/// mix (one flat buffer with offsets, a buffer per leaf, ...). Buffers need `STORAGE` usage.
#[derive(Clone, Copy, Debug)]
pub struct ExternalGradients<'a> {
    /// Main gradient of every leaf.
    pub main: &'a [LeafBuffer],
    /// Aux gradient of every leaf.
    pub aux: &'a [LeafBuffer],
    /// Where the direction goes.
    pub output: Output<'a>,
}

/// Everything a step over one set of gradient buffers needs, prepared once: validated
/// leaves, tile tables and bind groups. Made by [`BloopState::bind_pool`] or
/// [`BloopState::bind_external`] and usable only with the state that made it.
pub struct StepBindings {
    state_id: u64,
    kernels: Arc<VariantKernels>,
    state_group: wgpu::BindGroup,
    plan: Plan,
    output: Vec<LeafBuffer>,
    /// The user's distinct buffers, with a leaf and role that names each in errors: checked
    /// for being mapped or destroyed when a step is recorded.
    user_buffers: Vec<(wgpu::Buffer, String, Role)>,
}

impl std::fmt::Debug for StepBindings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepBindings")
            .field("dispatches", &self.plan.dispatches.len())
            .field("tiles", &self.plan.tile_count)
            .field("vec4", &self.kernels.variant.vec4)
            .field("binding_arrays", &self.binding_arrays())
            .field("storage_buffers", &self.storage_buffers())
            .finish()
    }
}

impl StepBindings {
    /// How many dispatches each of the accumulate and apply stages records.
    pub fn dispatch_count(&self) -> usize {
        self.plan.dispatches.len()
    }

    /// How many workgroups (tiles) each of the accumulate and apply stages runs in all.
    pub fn tile_count(&self) -> u64 {
        self.plan.tile_count
    }

    /// Whether the kernels load and store whole vec4s in segments whose offsets are multiples
    /// of 4 elements ([`crate::KernelOptions::vec4`]): f32 storage, no optimizer, not PCGrad
    /// or a hierarchy, and every bound range a whole number of vec4s.
    pub fn vector_loads(&self) -> bool {
        self.kernels.variant.vec4
    }

    /// Whether the user's buffers are bound as one binding array per role (the path
    /// [`crate::KernelOptions::binding_arrays`] chose), else as slots.
    pub fn binding_arrays(&self) -> bool {
        self.kernels.variant.array_buffers > 0
    }

    /// Storage buffers each stage over tiles binds (`max_storage_buffers_per_shader_stage`
    /// must allow them): levels bound as planes of one buffer count once; binding arrays
    /// ([`StepBindings::binding_arrays`]) count against another limit and not here.
    pub fn storage_buffers(&self) -> u32 {
        crate::kernels::Kernels::storage_buffers(self.kernels.variant)
    }

    /// Where each leaf's direction lands (none with [`Output::Discard`]).
    pub fn output_leaves(&self) -> &[LeafBuffer] {
        &self.output
    }

    /// The pipelines these bindings run (the sharded step picks its own stages from them).
    pub(crate) fn variant_kernels(&self) -> &Arc<VariantKernels> {
        &self.kernels
    }
}

struct EmaStore {
    _buffers: Vec<wgpu::Buffer>,
    leaves: Vec<LeafBuffer>,
}

/// Byte offset of the learning rate (f32) in [`BloopState::learning_rate_buffer`]: after the
/// step's scalars, in their buffer (`Scalars.schedule` in `shaders/bindings.wgsl`).
pub const LEARNING_RATE_OFFSET: u64 = SCALARS_BYTES;
/// Byte offset of the optimizer's step count (u32) in [`BloopState::learning_rate_buffer`].
pub const OPTIMIZER_STEP_OFFSET: u64 = LEARNING_RATE_OFFSET + 4;
/// Bytes of the schedule after the scalars (learning rate, step count, padding).
const SCHEDULE_BYTES: u64 = 16;

/// The optimizer's GPU side: its schedule (learning rate, step count) and state tensors.
struct OptimizerStore {
    /// The scalars' buffer, which holds the schedule at [`LEARNING_RATE_OFFSET`].
    schedule: wgpu::Buffer,
    tensors: Vec<EmaStore>,
}

/// The state of one combined optimisation problem: its configuration, its averages on the
/// GPU, and the step count. Steps are recorded into the caller's encoder; nothing here
/// submits work or waits on the GPU except the explicit `read_*` / `write_*` calls.
pub struct BloopState {
    id: u64,
    kernels: Arc<Kernels>,
    device: wgpu::Device,
    queue: wgpu::Queue,
    layout: Layout,
    config: Config,
    params: wgpu::Buffer,
    scalars: wgpu::Buffer,
    main_ema: Option<EmaStore>,
    aux_ema: Option<EmaStore>,
    optimizer: Option<OptimizerStore>,
    /// A hierarchy's averages e_1 .. e_{k-1} (e_0 is `main_ema`).
    levels: Vec<EmaStore>,
    steps: u64,
}

impl std::fmt::Debug for BloopState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BloopState")
            .field("config", &self.config)
            .field("leaves", &self.layout.len())
            .field("elements", &self.layout.total_elements())
            .field("steps", &self.steps)
            .finish()
    }
}

impl BloopState {
    /// Validates everything, allocates the averages and sets their initial values. `Values`
    /// and `Normal` inits are uploaded through `queue`; `Buffers` inits are copied in a
    /// command buffer submitted here (creation is not on the hot path).
    pub fn new(
        kernels: &Arc<Kernels>,
        queue: &wgpu::Queue,
        layout: &Layout,
        config: Config,
        init: EmaInits,
    ) -> Result<BloopState> {
        // A hierarchy's e_0 starts from `main`, e_1 .. from `aux` (normal seeds split per level).
        let levels = (1..config.levels.min(crate::config::MAX_LEVELS))
            .map(|j| match &init.aux {
                EmaInit::Normal { seed } => EmaInit::Normal { seed: crate::rng::derive_seed(*seed, j as u64) },
                other => other.clone(),
            })
            .collect();
        BloopState::with_levels(kernels, queue, layout, config, init, levels)
    }

    /// A state for a hierarchy (`Config::hierarchy`) whose averages `e_0 .. e_{k-1}` start from
    /// `inits`, one per non-last loss ([`Error::LevelCount`] otherwise).
    pub fn new_hierarchy(
        kernels: &Arc<Kernels>,
        queue: &wgpu::Queue,
        layout: &Layout,
        config: Config,
        inits: Vec<EmaInit>,
    ) -> Result<BloopState> {
        config.validate()?;
        if config.method != crate::config::Method::Hierarchy {
            return Err(Error::Mismatch(format!(
                "new_hierarchy needs a hierarchy config, not {}",
                config.method.name()
            )));
        }
        if inits.len() != config.levels {
            return Err(Error::LevelCount { what: "initial averages", expected: config.levels, got: inits.len() });
        }
        let mut inits = inits.into_iter();
        let main = inits.next().unwrap_or(EmaInit::Zeros);
        let init = EmaInits { main, aux: EmaInit::Zeros };
        BloopState::with_levels(kernels, queue, layout, config, init, inits.collect())
    }

    fn with_levels(
        kernels: &Arc<Kernels>,
        queue: &wgpu::Queue,
        layout: &Layout,
        config: Config,
        init: EmaInits,
        level_inits: Vec<EmaInit>,
    ) -> Result<BloopState> {
        config.validate()?;
        kernels.check_device()?;
        // Refused now rather than at the first checkpoint, hours into training.
        crate::checkpoint::check_header(layout, &config)?;
        let device = kernels.device().clone();
        let mut inits = vec![
            (config.method.has_main_ema(), EmaRole::Main, &init.main),
            (config.method.has_aux_ema(), EmaRole::Aux, &init.aux),
        ];
        inits.extend(level_inits.iter().enumerate().map(|(j, init)| (true, EmaRole::Level(j + 1), init)));
        for &(kept, role, init) in &inits {
            if kept {
                check_init(layout, role.role(), init, config.types.ema)?;
            }
        }
        // Compile before allocating so a failure leaves nothing behind.
        let opt = config.optimizer.as_ref();
        let flags = VariantFlags::of(&config);
        kernels.compile(kernels.describe(Kind::of(&config), false, flags, config.types, opt, true))?;
        let (max_buffer, window) = (device.limits().max_buffer_size, device.limits().max_storage_buffer_binding_size);
        // Every average of a leaf next to the others, so that a step binds them as planes of one
        // buffer (`shaders::Variant::state_planes`).
        let kept = inits.iter().filter(|i| i.0).count();
        let (buffers, planes) = match kept {
            0 => (Vec::new(), Vec::new()),
            _ => Packing::planes(layout, config.types.ema, kept, max_buffer, window, "EMA")?.allocate_planes(
                &device,
                layout,
                EMA_USAGE,
                "bloop EMA",
            )?,
        };
        let mut planes = planes.into_iter();
        let stores: Vec<Option<EmaStore>> = inits
            .iter()
            .map(|&(kept, ..)| {
                kept.then(|| EmaStore { _buffers: buffers.clone(), leaves: planes.next().expect("a plane") })
            })
            .collect();
        let mut stores = stores.into_iter();
        let (main_ema, aux_ema) = (stores.next().flatten(), stores.next().flatten());
        let levels: Vec<EmaStore> = stores.flatten().collect();
        // A hierarchy's finalize stage writes its coefficients and ratios after the scalars.
        // An optimizer's schedule follows them.
        let scalars_bytes = match (Kind::of(&config), config.optimizer) {
            (Kind::Hierarchy(k), _) => {
                SCALARS_BYTES + 4 * crate::shaders::hierarchy_slots::level_words(k as u32) as u64
            }
            (_, Some(_)) => SCALARS_BYTES + SCHEDULE_BYTES,
            (_, None) => SCALARS_BYTES,
        }
        .next_multiple_of(16);
        let tensors = match &config.optimizer {
            None => None,
            Some(o) => {
                // The moments of a leaf next to each other: planes of one binding, as the averages.
                let names = o.kind().state_names();
                let tensors = match names.len() {
                    0 => Vec::new(),
                    n => {
                        let packing = Packing::planes(layout, o.state, n, max_buffer, window, "optimizer state")?;
                        let (buffers, planes) =
                            packing.allocate_planes(&device, layout, EMA_USAGE, "bloop optimizer state")?;
                        planes.into_iter().map(|leaves| EmaStore { _buffers: buffers.clone(), leaves }).collect()
                    }
                };
                Some(tensors)
            }
        };
        // Buffers are filled through the queue, never mapped at creation: mapping panics inside
        // wgpu when the device is lost, and a lost device must come back as an error.
        let (params, scalars) = gpu_scope(&device, "allocating the state", || {
            let params = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("bloop params"),
                size: std::mem::size_of::<crate::config::GpuConstants>() as u64,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            queue.write_buffer(&params, 0, bytemuck::bytes_of(&config.gpu_constants()));
            let scalars = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("bloop scalars"),
                size: scalars_bytes,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            (params, scalars)
        })?;
        let optimizer = tensors.map(|tensors| OptimizerStore { schedule: scalars.clone(), tensors });
        if let Some(o) = &config.optimizer {
            queue.write_buffer(&scalars, LEARNING_RATE_OFFSET, bytemuck::bytes_of(&(o.lr as f32)));
        }
        let state = BloopState {
            id: NEXT_STATE_ID.fetch_add(1, Ordering::Relaxed),
            kernels: kernels.clone(),
            device,
            queue: queue.clone(),
            layout: layout.clone(),
            config,
            params,
            scalars,
            main_ema,
            aux_ema,
            optimizer,
            levels,
            steps: 0,
        };
        let mut encoder = None;
        for &(kept, role, init) in &inits {
            if !kept {
                continue;
            }
            let store = state.store(role)?;
            match init {
                EmaInit::Zeros => {} // wgpu zero-initialises new buffers
                EmaInit::Normal { seed } => {
                    let values = crate::rng::normal_leaves(*seed, &layout.lengths());
                    readback::write_leaves(queue, &store.leaves, &values);
                }
                EmaInit::Values(values) => readback::write_leaves(queue, &store.leaves, values),
                EmaInit::Buffers(sources) => {
                    validate::copies(
                        &state.device,
                        layout,
                        role.role(),
                        &sources.iter().zip(&store.leaves).collect::<Vec<_>>(),
                    )?;
                    let encoder =
                        encoder.get_or_insert_with(|| state.device.create_command_encoder(&Default::default()));
                    copy_leaves(encoder, sources, &store.leaves);
                }
            }
        }
        if let Some(encoder) = encoder {
            queue.submit([encoder.finish()]);
        }
        Ok(state)
    }

    /// The current configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The layout the state was made for.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Steps recorded so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The kernel set the state records with.
    pub fn kernels(&self) -> &Arc<Kernels> {
        &self.kernels
    }

    /// Changes the constants (ema, lambda, eps, rescale) for steps submitted from now on: the
    /// new values are written through the queue, so they apply to every command buffer
    /// submitted after this call, including ones recorded before it. The method, `ratio_only`,
    /// `guard`, `diagnostics`, `order` and a hierarchy's number of levels select kernels and
    /// cannot change (its weights can); nor can the optimizer's kind (SGD, SGD with momentum,
    /// Adam) and element types. The optimizer's other constants change here too, and its
    /// learning rate is written to the learning-rate buffer when it differs from the current
    /// config's.
    pub fn set_config(&mut self, config: Config) -> Result<()> {
        config.validate()?;
        let kernels = |c: &Config| {
            let optimizer = c.optimizer.map(|o| (o.kind(), o.params, o.state));
            (c.method, c.ratio_only, c.guard, c.diagnostics, c.project_first(), c.levels, optimizer)
        };
        if kernels(&config) != kernels(&self.config) {
            return Err(Error::Mismatch(format!(
                "a state made for (method, ratio_only, guard, diagnostics, project_first, levels, optimizer) = {:?} \
                 cannot switch to {:?}",
                kernels(&self.config),
                kernels(&config)
            )));
        }
        self.queue.write_buffer(&self.params, 0, bytemuck::bytes_of(&config.gpu_constants()));
        if let (Some(new), Some(old)) = (config.optimizer, self.config.optimizer) {
            if new.lr != old.lr {
                self.set_learning_rate(new.lr)?;
            }
        }
        self.config = config;
        Ok(())
    }

    fn optimizer_store(&self) -> Result<&OptimizerStore> {
        self.optimizer.as_ref().ok_or_else(|| Error::Optimizer("the state's config has no optimizer".into()))
    }

    /// The buffer that holds the optimizer's schedule (`STORAGE | COPY_SRC | COPY_DST`; the
    /// step's scalars, [`BloopState::scalars_buffer`], with the schedule after them): the
    /// learning rate as f32 at byte [`LEARNING_RATE_OFFSET`], the steps applied so far as u32
    /// at byte [`OPTIMIZER_STEP_OFFSET`]. Write the learning rate with `queue.write_buffer`, a buffer
    /// copy or a kernel of your own at any time: each step reads it when it runs, so a schedule
    /// needs neither rebinding nor a host sync. Leave the step count to the library.
    pub fn learning_rate_buffer(&self) -> Result<&wgpu::Buffer> {
        Ok(&self.optimizer_store()?.schedule)
    }

    /// Writes the learning rate through the queue: it applies to every step submitted after
    /// this call (finite and >= 0).
    pub fn set_learning_rate(&self, lr: f64) -> Result<()> {
        self.kernels.check_device()?;
        let store = self.optimizer_store()?;
        if !(lr.is_finite() && lr >= 0.0 && (lr as f32).is_finite()) {
            return Err(Error::InvalidConfig {
                field: "optimizer.lr",
                problem: format!("must be finite and >= 0, got {lr}"),
            });
        }
        self.queue.write_buffer(&store.schedule, LEARNING_RATE_OFFSET, bytemuck::bytes_of(&(lr as f32)));
        Ok(())
    }

    /// The learning rate and the optimizer's step count, read from the GPU (blocks).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_schedule(&self) -> Result<(f32, u64)> {
        pollster::block_on(self.read_schedule_async())
    }

    /// [`BloopState::read_schedule`] as a future (the form for wasm).
    pub async fn read_schedule_async(&self) -> Result<(f32, u64)> {
        self.kernels.check_device()?;
        let leaf = LeafBuffer::new(&self.optimizer_store()?.schedule, LEARNING_RATE_OFFSET, 2);
        let words = &readback::read_leaves_async(&self.device, &self.queue, &[leaf]).await?[0];
        Ok((words[0], words[1].to_bits() as u64))
    }

    /// The optimizer's state tensors' per-leaf buffers, in the order of
    /// [`crate::OptKind::state_names`] (momentum buffer; or first and second moments).
    pub fn optimizer_state_leaves(&self) -> Result<Vec<&[LeafBuffer]>> {
        Ok(self.optimizer_store()?.tensors.iter().map(|t| t.leaves.as_slice()).collect())
    }

    /// Reads the optimizer's state to the host: per tensor, one vector per leaf (blocks).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_optimizer_state(&self) -> Result<Vec<Vec<Vec<f32>>>> {
        pollster::block_on(self.read_optimizer_state_async())
    }

    /// [`BloopState::read_optimizer_state`] as a future (the form for wasm).
    pub async fn read_optimizer_state_async(&self) -> Result<Vec<Vec<Vec<f32>>>> {
        self.kernels.check_device()?;
        let store = self.optimizer_store()?;
        let mut tensors = Vec::with_capacity(store.tensors.len());
        for t in &store.tensors {
            tensors.push(readback::read_leaves_async(&self.device, &self.queue, &t.leaves).await?);
        }
        Ok(tensors)
    }

    /// Overwrites the optimizer's state (per tensor, one vector per leaf) and its step count.
    pub fn write_optimizer_state(&mut self, tensors: &[Vec<Vec<f32>>], step: u64) -> Result<()> {
        self.kernels.check_device()?;
        let store = self.optimizer_store()?;
        if tensors.len() != store.tensors.len() {
            return Err(Error::Optimizer(format!(
                "expected {} state tensors, got {}",
                store.tensors.len(),
                tensors.len()
            )));
        }
        let dtype = self.config.optimizer.map_or(DType::F32, |o| o.state);
        for values in tensors {
            validate::values(&self.layout, Role::OptimizerState, values, dtype)?;
        }
        let step = u32::try_from(step).map_err(|_| Error::Optimizer(format!("step count {step} exceeds u32")))?;
        for (t, values) in store.tensors.iter().zip(tensors) {
            readback::write_leaves(&self.queue, &t.leaves, values);
        }
        self.queue.write_buffer(&store.schedule, OPTIMIZER_STEP_OFFSET, bytemuck::bytes_of(&step));
        Ok(())
    }

    fn store(&self, role: EmaRole) -> Result<&EmaStore> {
        let store = match role {
            EmaRole::Main | EmaRole::Level(0) => self.main_ema.as_ref(),
            EmaRole::Aux => self.aux_ema.as_ref(),
            EmaRole::Level(j) => self.levels.get(j - 1),
        };
        store.ok_or(Error::NoSuchEma {
            method: self.config.method.name(),
            role: match role {
                EmaRole::Main => "main",
                EmaRole::Aux => "aux",
                EmaRole::Level(_) => "such level's",
            },
        })
    }

    /// The EMA's per-leaf buffers (for users who want to read or copy them themselves).
    pub fn ema_leaves(&self, role: EmaRole) -> Result<&[LeafBuffer]> {
        Ok(&self.store(role)?.leaves)
    }

    /// Reads an EMA back to the host, one vector per leaf. Blocks until the GPU is idle.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_ema(&self, role: EmaRole) -> Result<Vec<Vec<f32>>> {
        pollster::block_on(self.read_ema_async(role))
    }

    /// [`BloopState::read_ema`] as a future (the form for wasm).
    pub async fn read_ema_async(&self, role: EmaRole) -> Result<Vec<Vec<f32>>> {
        self.kernels.check_device()?;
        readback::read_leaves_async(&self.device, &self.queue, &self.store(role)?.leaves).await
    }

    /// Overwrites an EMA from host values, one vector per leaf (through the queue).
    pub fn write_ema(&mut self, role: EmaRole, values: &[Vec<f32>]) -> Result<()> {
        self.kernels.check_device()?;
        let store = self.store(role)?;
        validate::values(&self.layout, role.role(), values, self.config.types.ema)?;
        readback::write_leaves(&self.queue, &store.leaves, values);
        Ok(())
    }

    /// Records copies of the given leaves into an EMA, for example to start the average from
    /// the first main gradient inside the training loop. Sources need `COPY_SRC` and, like
    /// bound gradients, one entry per leaf of its length and type, in range, of this device
    /// (refused otherwise; the state is unchanged). `encoder` must be of the state's device.
    pub fn record_ema_copy(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        role: EmaRole,
        sources: &[LeafBuffer],
    ) -> Result<()> {
        self.kernels.check_device()?;
        let store = self.store(role)?;
        check_init(&self.layout, role.role(), &EmaInit::Buffers(sources.to_vec()), self.config.types.ema)?;
        validate::copies(
            &self.device,
            &self.layout,
            role.role(),
            &sources.iter().zip(&store.leaves).collect::<Vec<_>>(),
        )?;
        copy_leaves(encoder, sources, &store.leaves);
        Ok(())
    }

    /// Prepares steps over a pool made for this state's layout. With an optimizer, the pool
    /// needs a params role ([`GradientPool::with_params`]), which the steps update.
    pub fn bind_pool(&self, pool: &GradientPool) -> Result<StepBindings> {
        self.bind_pool_with(pool, false)
    }

    /// As [`BloopState::bind_pool`]; with `discard_output`, the direction is not written at
    /// all (states with an optimizer only).
    pub fn bind_pool_with(&self, pool: &GradientPool, discard_output: bool) -> Result<StepBindings> {
        if pool.layout() != &self.layout {
            return Err(Error::Mismatch("the pool was made for another layout".into()));
        }
        let output = match (discard_output, pool.in_place()) {
            (true, _) => Output::Discard,
            (false, true) => Output::InPlace,
            (false, false) => Output::Buffers(pool.output_leaves()),
        };
        if self.config.method == crate::config::Method::Hierarchy {
            let gradients: Vec<&[LeafBuffer]> =
                (0..pool.gradient_count()).filter_map(|level| pool.gradient_leaves(level)).collect();
            return self.bind_hierarchy(&gradients, output);
        }
        let gradients = ExternalGradients { main: pool.main_leaves(), aux: pool.aux_leaves(), output };
        match (&self.config.optimizer, pool.params_leaves()) {
            (None, _) => self.bind_inner(&gradients, None),
            (Some(_), Some(params)) => self.bind_inner(&gradients, Some(params)),
            (Some(_), None) => Err(Error::Optimizer(
                "the state's optimizer needs parameters, and the pool has none (GradientPool::with_params)".into(),
            )),
        }
    }

    /// Validates a hierarchy's buffers and prepares steps over them: `gradients[i]` holds every
    /// leaf's gradient of loss i (k + 1 lists, the main loss first); in place, the direction
    /// overwrites the main gradient.
    pub fn bind_hierarchy(&self, gradients: &[&[LeafBuffer]], output: Output) -> Result<StepBindings> {
        self.kernels.check_device()?;
        let c = &self.config;
        if c.method != crate::config::Method::Hierarchy {
            return Err(Error::Mismatch(format!("bind_hierarchy needs a hierarchy state, not {}", c.method.name())));
        }
        let k = c.levels;
        if gradients.len() != k + 1 {
            return Err(Error::LevelCount { what: "gradient lists", expected: k + 1, got: gradients.len() });
        }
        let layout = &self.layout;
        let storage = wgpu::BufferUsages::STORAGE;
        for (i, leaves) in gradients.iter().enumerate() {
            validate::leaves(layout, Role::Gradient(i), leaves, storage, c.types.gradients)?;
        }
        let output = match output {
            Output::InPlace => {
                c.types.check_in_place()?;
                gradients[0]
            }
            Output::Buffers(out) => {
                validate::leaves(layout, Role::Output, out, storage, c.types.output)?;
                out
            }
            Output::Discard => {
                return Err(Error::Optimizer("Output::Discard needs an optimizer in the config".into()));
            }
        };
        let inputs: Vec<(Role, &[LeafBuffer])> =
            gradients.iter().enumerate().map(|(i, leaves)| (Role::Gradient(i), *leaves)).collect();
        validate::outputs_of(layout, &inputs, output)?;
        // A set, as in `bind_inner`: linear in leaves.
        #[allow(clippy::mutable_key_type)]
        let input_buffers: std::collections::BTreeSet<&wgpu::Buffer> =
            gradients.iter().flat_map(|leaves| leaves.iter().map(|l| &l.buffer)).collect();
        let inputs_writable = output.iter().any(|o| input_buffers.contains(&o.buffer));
        let variant = self.kernels.describe(Kind::of(c), inputs_writable, VariantFlags::of(c), c.types, None, true);
        use crate::shaders::hierarchy_slots as slots;
        let k32 = k as u32;
        let mut roles: Vec<RoleLeaves> = gradients
            .iter()
            .enumerate()
            .map(|(i, leaves)| RoleLeaves::user(slots::gradient(i as u32), leaves, inputs_writable))
            .collect();
        for j in 0..k {
            let store = self.store(EmaRole::Level(j))?;
            roles.push(RoleLeaves::state(slots::ema(k32, j as u32), &store.leaves));
        }
        let gradient_planes = as_planes(&self.device, &mut roles[..=k]);
        let state_planes = as_planes(&self.device, &mut roles[k + 1..]);
        roles.push(RoleLeaves::user(slots::out(k32), output, true));
        let variant = Variant { gradient_planes, state_planes, ..variant };
        let mut bindings = self.finish_bindings(variant, &roles, 16 * slots::partial_vecs(k32) as u64, output)?;
        let mut users = inputs;
        users.push((Role::Output, output));
        bindings.user_buffers = validate::distinct_buffers(layout, &users);
        Ok(bindings)
    }

    /// The ratios of the last executed step of a hierarchy, `<g_i, u_j> / (<u_j, u_j> + eps)`
    /// for each aux loss i = 1..k (row i - 1) against each orthogonalised average u_j above it
    /// (j < i). Blocks; for tests and debugging.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_level_ratios(&self) -> Result<Vec<Vec<f32>>> {
        pollster::block_on(self.read_level_ratios_async())
    }

    /// [`BloopState::read_level_ratios`] as a future (the form for wasm).
    pub async fn read_level_ratios_async(&self) -> Result<Vec<Vec<f32>>> {
        if self.config.method != crate::config::Method::Hierarchy {
            return Err(Error::Mismatch(format!("{} has no levels", self.config.method.name())));
        }
        Ok(self.read_diagnostics_async().await?.level_ratios())
    }

    /// Validates the user's buffers and prepares steps over them (states without an optimizer;
    /// see [`BloopState::bind_external_with_params`]).
    ///
    /// Refused, naming the leaf and role: a list without one entry per leaf, a leaf of another
    /// length or element type, a buffer without `STORAGE`, a misaligned or out-of-range offset,
    /// an output overlapping anything but its own main gradient, a buffer of another device of
    /// the same instance, a mapped or destroyed buffer. The caller's duty: the buffers stay
    /// alive, unmapped and undestroyed while steps over them are in flight, and come from the
    /// state's wgpu instance (buffers of another instance cannot be told apart).
    pub fn bind_external(&self, gradients: &ExternalGradients) -> Result<StepBindings> {
        if self.config.optimizer.is_some() {
            return Err(Error::Optimizer(
                "the state's optimizer needs parameters: use bind_external_with_params".into(),
            ));
        }
        self.bind_inner(gradients, None)
    }

    /// Validates the user's gradient and parameter buffers (per leaf, like gradients: a buffer
    /// with `STORAGE` usage, an element-aligned offset, the optimizer's parameter type;
    /// overlapping nothing else of the step) and prepares steps that update the parameters.
    pub fn bind_external_with_params(
        &self,
        gradients: &ExternalGradients,
        params: &[LeafBuffer],
    ) -> Result<StepBindings> {
        if self.config.optimizer.is_none() {
            return Err(Error::Optimizer("parameters were given, but the state's config has no optimizer".into()));
        }
        self.bind_inner(gradients, Some(params))
    }

    fn bind_inner(&self, gradients: &ExternalGradients, params: Option<&[LeafBuffer]>) -> Result<StepBindings> {
        self.kernels.check_device()?;
        let layout = &self.layout;
        let storage = wgpu::BufferUsages::STORAGE;
        let types = self.config.types;
        validate::leaves(layout, Role::MainGrad, gradients.main, storage, types.gradients)?;
        validate::leaves(layout, Role::AuxGrad, gradients.aux, storage, types.gradients)?;
        let output = match gradients.output {
            Output::InPlace => {
                types.check_in_place()?;
                gradients.main
            }
            Output::Buffers(out) => {
                validate::leaves(layout, Role::Output, out, storage, types.output)?;
                out
            }
            Output::Discard if self.config.optimizer.is_none() => {
                return Err(Error::Optimizer("Output::Discard needs an optimizer in the config".into()));
            }
            Output::Discard => &[],
        };
        let write_out = !matches!(gradients.output, Output::Discard);
        validate::outputs(layout, gradients.main, gradients.aux, output)?;
        if self.config.method == crate::config::Method::Hierarchy {
            if self.config.levels != 1 {
                return Err(Error::LevelCount {
                    what: "gradient lists (main and aux; use bind_hierarchy)",
                    expected: self.config.levels + 1,
                    got: 2,
                });
            }
            return self.bind_hierarchy(&[gradients.main, gradients.aux], gradients.output);
        }
        let params = params.unwrap_or(&[]);
        if let Some(opt) = &self.config.optimizer {
            validate::leaves(layout, Role::Params, params, storage, opt.params)?;
            let others = [(Role::MainGrad, gradients.main), (Role::AuxGrad, gradients.aux), (Role::Output, output)];
            validate::params(layout, &others, params)?;
        }

        // A set, not a list: a model may have a hundred thousand leaves. Buffers order by
        // their identity, which their interior state never changes.
        #[allow(clippy::mutable_key_type)]
        let inputs: std::collections::BTreeSet<&wgpu::Buffer> =
            gradients.main.iter().chain(gradients.aux).map(|l| &l.buffer).collect();
        let inputs_writable = output.iter().chain(params).any(|o| inputs.contains(&o.buffer));
        let c = &self.config;
        let flags = VariantFlags::of(c);
        let variant =
            self.kernels.describe(Kind::of(c), inputs_writable, flags, c.types, c.optimizer.as_ref(), write_out);

        let mut gradient_roles = [
            RoleLeaves::user(slot::MAIN, gradients.main, inputs_writable),
            RoleLeaves::user(slot::AUX, gradients.aux, inputs_writable),
        ];
        let gradient_planes = as_planes(&self.device, &mut gradient_roles);
        let mut roles = gradient_roles.to_vec();
        if write_out {
            roles.push(RoleLeaves::user(slot::OUT, output, true));
        }
        let mut averages: Vec<RoleLeaves> = [(&self.main_ema, slot::MAIN_EMA), (&self.aux_ema, slot::AUX_EMA)]
            .into_iter()
            .filter_map(|(store, slot)| store.as_ref().map(|store| RoleLeaves::state(slot, &store.leaves)))
            .collect();
        let mut moments = Vec::new();
        if let Some(store) = &self.optimizer {
            roles.push(RoleLeaves::user(slot::PARAMS, params, true));
            let slots = [slot::OPT_M, slot::OPT_V];
            moments.extend(slots.iter().zip(&store.tensors).map(|(&slot, t)| RoleLeaves::state(slot, &t.leaves)));
        }
        // One switch for both (`Variant::state_planes`): planes where both fit.
        let (mut planar_averages, mut planar_moments) = (averages.clone(), moments.clone());
        let state_planes =
            as_planes(&self.device, &mut planar_averages) && as_planes(&self.device, &mut planar_moments);
        if state_planes {
            (averages, moments) = (planar_averages, planar_moments);
        }
        roles.extend(averages);
        roles.extend(moments);
        let variant = Variant { gradient_planes, state_planes, ..variant };
        let mut bindings = self.finish_bindings(variant, &roles, PARTIAL_BYTES, output)?;
        let users = [(Role::MainGrad, gradients.main), (Role::AuxGrad, gradients.aux), (Role::Output, output)];
        bindings.user_buffers = validate::distinct_buffers(layout, &users);
        bindings.user_buffers.extend(validate::distinct_buffers(layout, &[(Role::Params, params)]));
        Ok(bindings)
    }

    /// Groups the leaves, picks the smallest slot count (or binding-array length) that holds
    /// each group's buffers (within what the kernels and the device allow), and builds the
    /// dispatches with that variant.
    fn finish_bindings(
        &self,
        variant: Variant,
        roles: &[RoleLeaves],
        partial_bytes: u64,
        output: &[LeafBuffer],
    ) -> Result<StepBindings> {
        self.kernels.check_limits(variant)?;
        let arrays = self.kernels.binding_arrays()?;
        let counts = match arrays {
            Some(false) => self.kernels.slot_counts(variant),
            _ => self.kernels.array_lengths(Variant { array_buffers: 1, ..variant }),
        };
        let most = counts.last().copied().unwrap_or(1);
        let grouping = Grouping::new(&self.device, roles, most)?;
        let used = grouping.slots_used();
        let slots = counts.into_iter().find(|&s| s >= used).unwrap_or(most);
        // Chosen by the features: binding arrays only where one slot would not hold the
        // buffers (with one, the slots' kernels are the same and index no array).
        let binding = match arrays {
            Some(array) => SlotBinding { slots, array },
            None if used > 1 => SlotBinding { slots, array: true },
            None => SlotBinding { slots: 1, array: false },
        };
        // Vector loads where the variant has them (`Kernels::describe`) and every window holds
        // whole vec4s.
        let vec4 = variant.vec4 && grouping.vec4_ready();
        let variant = match binding.array {
            true => Variant { array_buffers: slots as u16, vec4, ..variant },
            false => Variant { slots: binding.slots as u8, vec4, ..variant },
        };
        let kernels = self.kernels.compile(variant)?;
        let tile_len = self.kernels.tile_len();
        let plan =
            Plan::new(&self.device, &self.queue, &kernels.group1, roles, grouping, binding, tile_len, partial_bytes)?;
        let state_group = gpu_scope(&self.device, "building the state's bind group", || {
            let partials = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("bloop partials"),
                size: plan.tile_count * partial_bytes,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            });
            let entries = vec![
                wgpu::BindGroupEntry { binding: 0, resource: self.params.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 1, resource: self.scalars.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 2, resource: partials.as_entire_binding() },
            ];
            self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("bloop state"),
                layout: &kernels.group0,
                entries: &entries,
            })
        })?;
        Ok(StepBindings {
            state_id: self.id,
            kernels,
            state_group,
            plan,
            output: output.to_vec(),
            user_buffers: Vec::new(),
        })
    }

    /// Records one step into `encoder`: the averages advance and the direction is written to
    /// the bindings' output. Nothing is submitted; the caller orders this after the commands
    /// that write the gradients and before those that read the direction.
    ///
    /// Refused here: bindings of another state, a lost device, and a bound buffer of the
    /// user's that is mapped or destroyed now ([`Error::BufferMapped`],
    /// [`Error::BufferDestroyed`]; checked for bindings over at most
    /// [`RECORD_CHECKED_BUFFERS`] distinct buffers). The caller's duty, since wgpu does not show it: `encoder`
    /// belongs to the state's device, no bound buffer gets a `map_async` or `destroy` between
    /// this call and the submit, and the encoder is submitted (once).
    pub fn record_step(&mut self, encoder: &mut wgpu::CommandEncoder, bindings: &StepBindings) -> Result<()> {
        self.record_step_timed(encoder, bindings, None)
    }

    /// As [`BloopState::record_step`], with timestamps written at the beginning and end of the
    /// step's compute pass (needs `Features::TIMESTAMP_QUERY`), for profiling.
    pub fn record_step_timed(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        bindings: &StepBindings,
        timestamp_writes: Option<wgpu::ComputePassTimestampWrites>,
    ) -> Result<()> {
        let pipelines: Vec<(&wgpu::ComputePipeline, bool)> =
            bindings.kernels.stages.iter().map(|(stage, pipeline)| (pipeline, *stage != Stage::Finalize)).collect();
        self.record_pipelines(encoder, bindings, ("bloop step", timestamp_writes), &pipelines, true)
    }

    /// Records `pipelines` in one compute pass, each over the bindings' tiles (`true`) or as a
    /// single workgroup (`false`): a whole step, or one of the two halves of a sharded step
    /// ([`crate::sharded`]).
    /// `completes_step` counts the step.
    pub(crate) fn record_pipelines(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        bindings: &StepBindings,
        (label, timestamp_writes): (&'static str, Option<wgpu::ComputePassTimestampWrites>),
        pipelines: &[(&wgpu::ComputePipeline, bool)],
        completes_step: bool,
    ) -> Result<()> {
        if bindings.state_id != self.id {
            return Err(Error::Mismatch("these bindings were made by another state".into()));
        }
        self.kernels.check_device()?;
        // What can be seen of the user's buffers now; the rest (a map requested but not landed,
        // an encoder of another device) is the caller's to avoid (see `record_step`). Each check
        // is a lookup in wgpu, about a microsecond: steps over more distinct buffers than
        // `RECORD_CHECKED_BUFFERS` (a buffer per leaf of a large model) skip it on the hot path.
        if bindings.user_buffers.len() <= RECORD_CHECKED_BUFFERS {
            for (buffer, leaf, role) in &bindings.user_buffers {
                validate::not_mapped(buffer, || leaf.clone(), *role)?;
            }
        }
        let mut pass =
            encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(label), timestamp_writes });
        pass.set_bind_group(0, &bindings.state_group, &[]);
        for &(pipeline, over_tiles) in pipelines {
            pass.set_pipeline(pipeline);
            if !over_tiles {
                pass.dispatch_workgroups(1, 1, 1);
                continue;
            }
            for dispatch in &bindings.plan.dispatches {
                pass.set_bind_group(1, &dispatch.bind_group, &[]);
                pass.dispatch_workgroups(dispatch.workgroups[0], dispatch.workgroups[1], 1);
            }
        }
        drop(pass);
        if completes_step {
            self.steps += 1;
        }
        Ok(())
    }

    /// The scalars of the last executed step (ratios, dot products, norms, skip flag and
    /// counter). Blocks; for tests, checkpoints and debugging. A training loop uses
    /// [`crate::diagnostics::DiagnosticsRing`] instead, which never waits.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_diagnostics(&self) -> Result<StepDiagnostics> {
        pollster::block_on(self.read_diagnostics_async())
    }

    /// [`BloopState::read_diagnostics`] as a future (the form for wasm).
    pub async fn read_diagnostics_async(&self) -> Result<StepDiagnostics> {
        self.kernels.check_device()?;
        let leaf = LeafBuffer::new(&self.scalars, 0, self.scalars.size() / 4);
        let values = &readback::read_leaves_async(&self.device, &self.queue, &[leaf]).await?[0];
        let levels = self.config.level_lambdas().len() as u8;
        Ok(StepDiagnostics::from_level_words(self.steps.saturating_sub(1), bytemuck::cast_slice(values), levels))
    }

    /// Steps the guard skipped so far (read from the GPU; blocks).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn skipped_steps(&self) -> Result<u64> {
        pollster::block_on(self.skipped_steps_async())
    }

    /// [`BloopState::skipped_steps`] as a future (the form for wasm).
    pub async fn skipped_steps_async(&self) -> Result<u64> {
        Ok(self.read_diagnostics_async().await?.skipped_steps as u64)
    }

    /// The state as a [`Checkpoint`]: config, layout, step counts and every EMA. Blocks until
    /// the GPU is idle (a checkpoint is taken between steps, not inside the hot loop).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn checkpoint(&self) -> Result<Checkpoint> {
        pollster::block_on(self.checkpoint_async())
    }

    /// [`BloopState::checkpoint`] as a future (the form for wasm; [`Checkpoint::to_bytes`] then
    /// gives the file's bytes).
    pub async fn checkpoint_async(&self) -> Result<Checkpoint> {
        let read = |role, kept: bool| async move {
            if kept {
                self.read_ema_async(role).await
            } else {
                Ok(Vec::new())
            }
        };
        let mut level_emas = Vec::with_capacity(self.levels.len());
        for j in 1..=self.levels.len() {
            level_emas.push(self.read_ema_async(EmaRole::Level(j)).await?);
        }
        Ok(Checkpoint {
            config: self.config,
            layout: self.layout.clone(),
            steps: self.steps,
            skipped_steps: self.skipped_steps_async().await?,
            main_ema: read(EmaRole::Main, self.config.method.has_main_ema()).await?,
            aux_ema: read(EmaRole::Aux, self.config.method.has_aux_ema()).await?,
            level_emas,
            optimizer: match &self.optimizer {
                None => None,
                Some(_) => {
                    let (learning_rate, step) = self.read_schedule_async().await?;
                    let tensors = self.read_optimizer_state_async().await?;
                    Some(OptimizerCheckpoint { learning_rate, step, tensors })
                }
            },
        })
    }

    /// Writes [`BloopState::checkpoint`] to a safetensors file (not on wasm, which has no files:
    /// there [`BloopState::checkpoint_async`] and [`Checkpoint::to_bytes`] give the bytes).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn save_checkpoint(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        let bytes = self.checkpoint()?.to_bytes()?;
        std::fs::write(path.as_ref(), bytes).map_err(|e| Error::Checkpoint(format!("{}: {e}", path.as_ref().display())))
    }

    /// Takes the averages and counters of `checkpoint`, which must have this state's layout
    /// and config, and vectors that fit them ([`Checkpoint::check_fits`]: one per leaf of the
    /// leaf's length, finite in the stored type; counters within the GPU's u32). The error
    /// names the first difference; the state is unchanged then.
    pub fn restore(&mut self, checkpoint: &Checkpoint) -> Result<()> {
        self.kernels.check_device()?;
        checkpoint.check_fits(&self.layout, &self.config)?;
        if let (Some(store), Some(saved)) = (&self.optimizer, &checkpoint.optimizer) {
            let step = u32::try_from(saved.step)
                .map_err(|_| Error::Checkpoint(format!("optimizer step {} exceeds u32", saved.step)))?;
            for (t, values) in store.tensors.iter().zip(&saved.tensors) {
                readback::write_leaves(&self.queue, &t.leaves, values);
            }
            let words = [saved.learning_rate.to_bits(), step];
            self.queue.write_buffer(&store.schedule, LEARNING_RATE_OFFSET, bytemuck::cast_slice(&words));
        }
        if let Some(store) = &self.main_ema {
            readback::write_leaves(&self.queue, &store.leaves, &checkpoint.main_ema);
        }
        if let Some(store) = &self.aux_ema {
            readback::write_leaves(&self.queue, &store.leaves, &checkpoint.aux_ema);
        }
        for (store, values) in self.levels.iter().zip(&checkpoint.level_emas) {
            readback::write_leaves(&self.queue, &store.leaves, values);
        }
        // `Scalars.skipped_steps` is the fourth word of the block.
        self.queue.write_buffer(&self.scalars, 12, bytemuck::bytes_of(&(checkpoint.skipped_steps as u32)));
        self.steps = checkpoint.steps;
        Ok(())
    }

    /// Reads a safetensors file written by [`BloopState::save_checkpoint`] and restores it.
    pub fn load_checkpoint(&mut self, path: impl AsRef<std::path::Path>) -> Result<()> {
        let bytes =
            std::fs::read(path.as_ref()).map_err(|e| Error::Checkpoint(format!("{}: {e}", path.as_ref().display())))?;
        self.load_checkpoint_bytes(&bytes)
    }

    /// [`BloopState::load_checkpoint`] from bytes already in memory.
    pub fn load_checkpoint_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        self.restore(&Checkpoint::from_bytes(bytes)?)
    }

    /// A new state with the config, layout, averages and counters of a checkpoint.
    pub fn from_checkpoint(kernels: &Arc<Kernels>, queue: &wgpu::Queue, checkpoint: &Checkpoint) -> Result<BloopState> {
        // `new` makes every average a hierarchy's config asks for.
        let mut state = BloopState::new(kernels, queue, &checkpoint.layout, checkpoint.config, EmaInits::zeros())?;
        state.restore(checkpoint)?;
        Ok(state)
    }

    /// The buffer the finalize stage writes each step's scalars into (48 bytes, more for a hierarchy, see
    /// [`crate::diagnostics`]); `COPY_SRC`, for copies the caller records.
    pub fn scalars_buffer(&self) -> &wgpu::Buffer {
        &self.scalars
    }
}

/// Checks an initial value against the layout and the role's element type (host values must
/// be finite in it) without touching any state.
fn check_init(layout: &Layout, role: Role, init: &EmaInit, dtype: DType) -> Result<()> {
    match init {
        EmaInit::Zeros | EmaInit::Normal { .. } => Ok(()),
        EmaInit::Values(values) => validate::values(layout, role, values, dtype),
        EmaInit::Buffers(sources) => validate::leaves(layout, role, sources, wgpu::BufferUsages::COPY_SRC, dtype),
    }
}

/// Binds `roles` (the levels of one kind: gradients, averages, moments) as planes of one buffer
/// where their leaves allow it (`plan::planes_fit`): whether they now are (as one role or none
/// trivially is, so that the variant matches the one compiled at the state's creation).
fn as_planes(device: &wgpu::Device, roles: &mut [RoleLeaves]) -> bool {
    let Some(first) = roles.first().map(|r| r.binding) else { return true };
    let planes: Vec<RoleLeaves> = roles.iter().map(|r| r.plane_of(first)).collect();
    let fit = crate::plan::planes_fit(device, &planes);
    if fit {
        roles.copy_from_slice(&planes);
    }
    fit
}

fn copy_leaves(encoder: &mut wgpu::CommandEncoder, sources: &[LeafBuffer], targets: &[LeafBuffer]) {
    for (src, dst) in sources.iter().zip(targets) {
        encoder.copy_buffer_to_buffer(&src.buffer, src.offset, &dst.buffer, dst.offset, validate::copy_size(src));
    }
}
