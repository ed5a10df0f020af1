//! The per-model state: EMA buffers, constants, and recording of steps.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::checkpoint::Checkpoint;
use crate::config::{Config, EmaInit, EmaInits};
use crate::context::gpu_scope;
use crate::scalars::{StepDiagnostics, SCALARS_BYTES};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::kernels::{slot, Kernels, VariantFlags, VariantKernels};
use crate::layout::{Layout, LeafBuffer, Packing, Role};
use crate::plan::{Plan, RoleLeaves, PARTIAL_BYTES};
use crate::pool::GradientPool;
use crate::readback;
use crate::shaders::{Kind, Stage};
use crate::validate;

/// Usage of the EMA buffers: read and written by the kernels, copied for checkpoints.
const EMA_USAGE: wgpu::BufferUsages =
    wgpu::BufferUsages::STORAGE.union(wgpu::BufferUsages::COPY_SRC).union(wgpu::BufferUsages::COPY_DST);

static NEXT_STATE_ID: AtomicU64 = AtomicU64::new(1);

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
}

impl std::fmt::Debug for StepBindings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepBindings")
            .field("dispatches", &self.plan.dispatches.len())
            .field("tiles", &self.plan.tile_count)
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

    /// Where each leaf's direction lands.
    pub fn output_leaves(&self) -> &[LeafBuffer] {
        &self.output
    }
}

struct EmaStore {
    _buffers: Vec<wgpu::Buffer>,
    leaves: Vec<LeafBuffer>,
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
            return Err(Error::Mismatch(format!("new_hierarchy needs a hierarchy config, not {}", config.method.name())));
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
        kernels.variant(Kind::of(&config), false, VariantFlags::of(&config), config.types)?;
        let max_buffer = device.limits().max_buffer_size;
        let packing = Packing::new(layout, config.types.ema, max_buffer, "EMA")?;
        let mut stores: Vec<Option<EmaStore>> = Vec::new();
        for &(kept, role, _) in &inits {
            let mut store = None;
            if kept {
                let label = format!("bloop {role:?} EMA");
                let (buffers, leaves) = packing.allocate(&device, layout, EMA_USAGE, &label)?;
                store = Some(EmaStore { _buffers: buffers, leaves });
            }
            stores.push(store);
        }
        let mut stores = stores.into_iter();
        let (main_ema, aux_ema) = (stores.next().flatten(), stores.next().flatten());
        let levels: Vec<EmaStore> = stores.flatten().collect();
        // A hierarchy's finalize stage writes its coefficients and ratios after the scalars.
        let scalars_bytes = match Kind::of(&config) {
            Kind::Hierarchy(k) => SCALARS_BYTES + 4 * crate::shaders::hierarchy_slots::level_words(k as u32) as u64,
            _ => SCALARS_BYTES,
        }
        .next_multiple_of(16);
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
    /// cannot change (its weights can).
    pub fn set_config(&mut self, config: Config) -> Result<()> {
        config.validate()?;
        let kernels = |c: &Config| (c.method, c.ratio_only, c.guard, c.diagnostics, c.project_first(), c.levels);
        if kernels(&config) != kernels(&self.config) {
            return Err(Error::Mismatch(format!(
                "a state made for (method, ratio_only, guard, diagnostics, project_first, levels) = {:?} cannot switch to {:?}",
                kernels(&self.config),
                kernels(&config)
            )));
        }
        self.queue.write_buffer(&self.params, 0, bytemuck::bytes_of(&config.gpu_constants()));
        self.config = config;
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
    pub fn read_ema(&self, role: EmaRole) -> Result<Vec<Vec<f32>>> {
        self.kernels.check_device()?;
        readback::read_leaves(&self.device, &self.queue, &self.store(role)?.leaves)
    }

    /// Overwrites an EMA from host values, one vector per leaf (through the queue).
    pub fn write_ema(&mut self, role: EmaRole, values: &[Vec<f32>]) -> Result<()> {
        self.kernels.check_device()?;
        let store = self.store(role)?;
        check_init(&self.layout, role.role(), &EmaInit::Values(values.to_vec()), self.config.types.ema)?;
        readback::write_leaves(&self.queue, &store.leaves, values);
        Ok(())
    }

    /// Records copies of the given leaves into an EMA, for example to start the average from
    /// the first main gradient inside the training loop. Sources need `COPY_SRC`.
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

    /// Prepares steps over a pool made for this state's layout.
    pub fn bind_pool(&self, pool: &GradientPool) -> Result<StepBindings> {
        if pool.layout() != &self.layout {
            return Err(Error::Mismatch("the pool was made for another layout".into()));
        }
        let output = if pool.in_place() { Output::InPlace } else { Output::Buffers(pool.output_leaves()) };
        if self.config.method == crate::config::Method::Hierarchy {
            let gradients: Vec<&[LeafBuffer]> =
                (0..pool.gradient_count()).filter_map(|level| pool.gradient_leaves(level)).collect();
            return self.bind_hierarchy(&gradients, output);
        }
        self.bind_external(&ExternalGradients { main: pool.main_leaves(), aux: pool.aux_leaves(), output })
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
        };
        let inputs: Vec<(Role, &[LeafBuffer])> =
            gradients.iter().enumerate().map(|(i, leaves)| (Role::Gradient(i), *leaves)).collect();
        validate::outputs_of(layout, &inputs, output)?;
        let inputs_writable =
            output.iter().any(|o| gradients.iter().any(|leaves| leaves.iter().any(|l| l.buffer == o.buffer)));
        let kernels = self.kernels.variant(Kind::of(c), inputs_writable, VariantFlags::of(c), c.types)?;
        use crate::shaders::hierarchy_slots as slots;
        let k32 = k as u32;
        let mut roles: Vec<RoleLeaves> = gradients
            .iter()
            .enumerate()
            .map(|(i, leaves)| RoleLeaves { slot: slots::gradient(i as u32), leaves })
            .collect();
        for j in 0..k {
            let store = self.store(EmaRole::Level(j))?;
            roles.push(RoleLeaves { slot: slots::ema(k32, j as u32), leaves: &store.leaves });
        }
        roles.push(RoleLeaves { slot: slots::out(k32), leaves: output });
        self.finish_bindings(kernels, &roles, 16 * slots::partial_vecs(k32) as u64, output)
    }

    /// The ratios of the last executed step of a hierarchy, `<g_i, u_j> / (<u_j, u_j> + eps)`
    /// for each aux loss i = 1..k (row i - 1) against each orthogonalised average u_j above it
    /// (j < i). Blocks; for tests and debugging.
    pub fn read_level_ratios(&self) -> Result<Vec<Vec<f32>>> {
        if self.config.method != crate::config::Method::Hierarchy {
            return Err(Error::Mismatch(format!("{} has no levels", self.config.method.name())));
        }
        Ok(self.read_diagnostics()?.level_ratios())
    }

    /// Validates the user's buffers and prepares steps over them.
    pub fn bind_external(&self, gradients: &ExternalGradients) -> Result<StepBindings> {
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
        };
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

        let inputs: Vec<&wgpu::Buffer> = gradients.main.iter().chain(gradients.aux).map(|l| &l.buffer).collect();
        let inputs_writable = output.iter().any(|o| inputs.contains(&&o.buffer));
        let c = &self.config;
        let kernels = self.kernels.variant(Kind::of(c), inputs_writable, VariantFlags::of(c), c.types)?;

        let mut roles = vec![
            RoleLeaves { slot: slot::MAIN, leaves: gradients.main },
            RoleLeaves { slot: slot::AUX, leaves: gradients.aux },
            RoleLeaves { slot: slot::OUT, leaves: output },
        ];
        for (store, slot) in [(&self.main_ema, slot::MAIN_EMA), (&self.aux_ema, slot::AUX_EMA)] {
            if let Some(store) = store {
                roles.push(RoleLeaves { slot, leaves: &store.leaves });
            }
        }
        self.finish_bindings(kernels, &roles, PARTIAL_BYTES, output)
    }

    fn finish_bindings(
        &self,
        kernels: Arc<VariantKernels>,
        roles: &[RoleLeaves],
        partial_bytes: u64,
        output: &[LeafBuffer],
    ) -> Result<StepBindings> {
        let plan = Plan::new(&self.device, &self.queue, &kernels.group1, roles, partial_bytes)?;
        let state_group = gpu_scope(&self.device, "building the state's bind group", || {
            let partials = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("bloop partials"),
                size: plan.tile_count * partial_bytes,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            });
            self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("bloop state"),
                layout: &kernels.group0,
                entries: &[
                    wgpu::BindGroupEntry { binding: 0, resource: self.params.as_entire_binding() },
                    wgpu::BindGroupEntry { binding: 1, resource: self.scalars.as_entire_binding() },
                    wgpu::BindGroupEntry { binding: 2, resource: partials.as_entire_binding() },
                ],
            })
        })?;
        Ok(StepBindings { state_id: self.id, kernels, state_group, plan, output: output.to_vec() })
    }

    /// Records one step into `encoder`: the averages advance and the direction is written to
    /// the bindings' output. Nothing is submitted; the caller orders this after the commands
    /// that write the gradients and before those that read the direction.
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
        if bindings.state_id != self.id {
            return Err(Error::Mismatch("these bindings were made by another state".into()));
        }
        self.kernels.check_device()?;
        let mut pass =
            encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("bloop step"), timestamp_writes });
        pass.set_bind_group(0, &bindings.state_group, &[]);
        for (stage, pipeline) in &bindings.kernels.stages {
            pass.set_pipeline(pipeline);
            if *stage == Stage::Finalize {
                pass.dispatch_workgroups(1, 1, 1);
                continue;
            }
            for dispatch in &bindings.plan.dispatches {
                pass.set_bind_group(1, &dispatch.bind_group, &[]);
                pass.dispatch_workgroups(dispatch.workgroups[0], dispatch.workgroups[1], 1);
            }
        }
        drop(pass);
        self.steps += 1;
        Ok(())
    }

    /// The scalars of the last executed step (ratios, dot products, norms, skip flag and
    /// counter). Blocks; for tests, checkpoints and debugging. A training loop uses
    /// [`crate::diagnostics::DiagnosticsRing`] instead, which never waits.
    pub fn read_diagnostics(&self) -> Result<StepDiagnostics> {
        self.kernels.check_device()?;
        let leaf = LeafBuffer::new(&self.scalars, 0, self.scalars.size() / 4);
        let values = &readback::read_leaves(&self.device, &self.queue, &[leaf])?[0];
        let levels = self.config.level_lambdas().len() as u8;
        Ok(StepDiagnostics::from_level_words(self.steps.saturating_sub(1), bytemuck::cast_slice(values), levels))
    }

    /// Steps the guard skipped so far (read from the GPU; blocks).
    pub fn skipped_steps(&self) -> Result<u64> {
        Ok(self.read_diagnostics()?.skipped_steps as u64)
    }

    /// The state as a [`Checkpoint`]: config, layout, step counts and every EMA. Blocks until
    /// the GPU is idle (a checkpoint is taken between steps, not inside the hot loop).
    pub fn checkpoint(&self) -> Result<Checkpoint> {
        let read = |role, kept: bool| if kept { self.read_ema(role) } else { Ok(Vec::new()) };
        Ok(Checkpoint {
            config: self.config,
            layout: self.layout.clone(),
            steps: self.steps,
            skipped_steps: self.skipped_steps()?,
            main_ema: read(EmaRole::Main, self.config.method.has_main_ema())?,
            aux_ema: read(EmaRole::Aux, self.config.method.has_aux_ema())?,
            level_emas: (1..=self.levels.len()).map(|j| self.read_ema(EmaRole::Level(j))).collect::<Result<_>>()?,
        })
    }

    /// Writes [`BloopState::checkpoint`] to a safetensors file.
    pub fn save_checkpoint(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        let bytes = self.checkpoint()?.to_bytes()?;
        std::fs::write(path.as_ref(), bytes).map_err(|e| Error::Checkpoint(format!("{}: {e}", path.as_ref().display())))
    }

    /// Takes the averages and counters of `checkpoint`, which must have this state's layout
    /// and config (the error names the first difference; the state is unchanged then).
    pub fn restore(&mut self, checkpoint: &Checkpoint) -> Result<()> {
        self.kernels.check_device()?;
        checkpoint.check_fits(&self.layout, &self.config)?;
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

/// Checks an initial value against the layout (and, for GPU sources, the EMA's element type)
/// without touching any state.
fn check_init(layout: &Layout, role: Role, init: &EmaInit, dtype: DType) -> Result<()> {
    match init {
        EmaInit::Zeros | EmaInit::Normal { .. } => Ok(()),
        EmaInit::Values(values) => {
            if values.len() != layout.len() {
                return Err(Error::LeafCount { role, expected: layout.len(), got: values.len() });
            }
            for (leaf, v) in layout.leaves().iter().zip(values) {
                if v.len() as u64 != leaf.len {
                    return Err(Error::LeafLength {
                        leaf: leaf.name.clone(),
                        role,
                        expected: leaf.len,
                        got: v.len() as u64,
                    });
                }
                // A non-finite average would poison every later projection, and the guard
                // checks gradients only.
                if let Some((index, &value)) = v.iter().enumerate().find(|(_, x)| !x.is_finite()) {
                    return Err(Error::NonFiniteValue { leaf: leaf.name.clone(), role, index: index as u64, value });
                }
            }
            Ok(())
        }
        EmaInit::Buffers(sources) => validate::leaves(layout, role, sources, wgpu::BufferUsages::COPY_SRC, dtype),
    }
}

fn copy_leaves(encoder: &mut wgpu::CommandEncoder, sources: &[LeafBuffer], targets: &[LeafBuffer]) {
    for (src, dst) in sources.iter().zip(targets) {
        encoder.copy_buffer_to_buffer(&src.buffer, src.offset, &dst.buffer, dst.offset, validate::copy_size(src));
    }
}
