//! A step over a model whose leaves are sharded across ranks (processes or GPUs), each rank
//! keeping the averages of its own leaves only (ZeRO-1 style: the EMA memory is divided by the
//! number of ranks).
//!
//! The projection needs only a few sums over *all* leaves (`<e, g_aux>`, `|e|^2`, for PCGrad
//! `<a, g_main>`, `|a|^2`, and with the guard or diagnostics `|g_main|^2`, `|g_aux|^2`,
//! `<g_main, g_aux>` and the count of non-finite elements): eight numbers. A sharded step is
//! therefore split in two around one small exchange:
//!
//! 1. [`ShardedState::record_sums`] records the first pass over this rank's leaves and a copy
//!    of its eight partial sums (32 bytes) into a mappable buffer. The caller submits.
//! 2. [`ShardedState::exchange_sums`] waits for that copy: **the one readback of the step, and
//!    its only synchronisation with the GPU**. It all-reduces the eight sums (as `f64`) through
//!    a [`Collective`], and with the guard a max of one flag, so that a non-finite value on any
//!    rank skips the step on every rank. The global sums and the decision are written back
//!    through the queue (they land before the next submit).
//! 3. [`ShardedState::record_apply`] records the ratios' computation from the global sums and
//!    the apply pass, which writes the direction and this rank's averages.
//!
//! With one rank the result equals [`BloopState::record_step`]'s (up to the rounding of the
//! sums, which go through `f64` on the host). Every method, `ratio_only`, `rescale`, the guard
//! and diagnostics work as on one device; the state's diagnostics hold the global scalars.
//!
//! ```no_run
//! # use bloop::*; use bloop::collective::SingleRank; use bloop::sharded::{ShardedState, balanced_shards};
//! # fn main() -> Result<()> {
//! # let gpu = GpuContext::from_env()?; let kernels = Kernels::new(&gpu.device);
//! # let comm = SingleRank;
//! let layout = Layout::from_lengths(&[4096, 64, 4096, 64])?;       // the whole model
//! let owned = &balanced_shards(&layout, comm.size())[comm.rank()]; // this rank's leaves
//! let config = Config::new(Method::Bloop).ema(0.01).lambda(0.5);
//! let mut state = ShardedState::new(&kernels, &gpu.queue, &layout, owned, config, EmaInits::zeros(), &comm)?;
//! let pool = state.local_layout().map(|l| GradientPool::new(&gpu.device, l, false)).transpose()?;
//! let bindings = state.bind_pool(pool.as_ref())?;                // none for an empty shard
//! let mut encoder = gpu.device.create_command_encoder(&Default::default());
//! // ... this rank's global-batch gradients of its leaves into the pool ...
//! state.record_sums(&mut encoder, &bindings)?;
//! gpu.queue.submit([encoder.finish()]);
//! state.exchange_sums(&comm)?;
//! let mut encoder = gpu.device.create_command_encoder(&Default::default());
//! state.record_apply(&mut encoder, &bindings)?;
//! gpu.queue.submit([encoder.finish()]);
//! # Ok(()) }
//! ```

use std::sync::Arc;

use crate::collective::Collective;
use crate::config::{Config, EmaInits};
use crate::error::{Error, Result};
use crate::kernels::Kernels;
use crate::layout::Layout;
use crate::pool::GradientPool;
use crate::shaders::{Kind, Stage};
use crate::state::{BloopState, ExternalGradients, StepBindings};

/// Where the step's sums lie in the `Scalars` block of `shaders/bindings.wgsl` (`dots` then
/// `grads`, eight f32), and their size: what each rank reads back and writes back per step.
const SUMS_OFFSET: u64 = 16;
const SUMS_BYTES: u64 = 32;
/// The readback holds the sums, then the stamp of the `record_sums` whose copy filled it.
const READBACK_BYTES: u64 = SUMS_BYTES + 4;

/// Leaves split over `ranks` ranks in layout order, each rank taking a contiguous run of about
/// the same number of elements. Ranks past the number of leaves get none.
pub fn balanced_shards(layout: &Layout, ranks: usize) -> Vec<Vec<usize>> {
    let ranks = ranks.max(1);
    let total = layout.total_elements() as f64;
    let mut shards = vec![Vec::new(); ranks];
    let mut before = 0u64;
    for (i, leaf) in layout.leaves().iter().enumerate() {
        // The rank whose share holds this leaf's middle element.
        let middle = before as f64 + leaf.len as f64 / 2.0;
        let rank = ((middle / total * ranks as f64) as usize).min(ranks - 1);
        shards[rank].push(i);
        before += leaf.len;
    }
    shards
}

/// The global sums of one sharded step, as every rank computed them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GlobalSums {
    /// `<e, g_aux>`, `|e|^2`, `<a, g_main>`, `|a|^2` over every rank's leaves.
    pub dots: [f64; 4],
    /// `|g_main|^2`, `|g_aux|^2`, `<g_main, g_aux>` and the count of non-finite gradient
    /// elements (with the guard or diagnostics on; else 0).
    pub grads: [f64; 4],
    /// Whether the guard skips this step (on every rank).
    pub skipped: bool,
}

/// Where a sharded step stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    SumsRecorded,
    Exchanged,
}

/// Bindings of a sharded state: those of this rank's leaves, or none for an empty shard.
#[derive(Debug)]
pub struct ShardedBindings {
    inner: Option<StepBindings>,
}

impl ShardedBindings {
    /// The bindings of this rank's leaves (`None` for a rank that owns no leaf).
    pub fn local(&self) -> Option<&StepBindings> {
        self.inner.as_ref()
    }
}

/// The state of this rank's shard of a model: the averages of the leaves it owns, and the
/// split-phase step (see the module documentation).
pub struct ShardedState {
    rank: usize,
    size: usize,
    global: Layout,
    owned: Vec<usize>,
    local: Option<Layout>,
    config: Config,
    queue: wgpu::Queue,
    device: wgpu::Device,
    inner: Option<BloopState>,
    /// Where [`ShardedState::record_sums`] copies this rank's totals (32 bytes, mappable) and
    /// the step's stamp after them.
    readback: Option<wgpu::Buffer>,
    /// Holds the stamp of the step being recorded (written through the queue); the encoder of
    /// `record_sums` copies it next to the sums, so that `exchange_sums` can tell sums of this
    /// step from stale ones whose encoder was never submitted.
    stamp: Option<wgpu::Buffer>,
    phase: Phase,
    steps: u64,
    last: Option<GlobalSums>,
}

impl std::fmt::Debug for ShardedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardedState")
            .field("rank", &self.rank)
            .field("size", &self.size)
            .field("owned", &self.owned)
            .field("config", &self.config)
            .field("steps", &self.steps)
            .finish()
    }
}

/// FNV-1a of a canonical text: the same on every rank and machine.
fn fingerprint(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// The config's fields as the ranks compare them, the most telling first (as a checkpoint
/// mismatch names them): a fixed list, so every rank gathers as many words.
const CONFIG_FIELDS: [&str; 14] = [
    "method",
    "optimizer",
    "lambdas",
    "order",
    "ema",
    "lambda",
    "eps",
    "rescale",
    "ratio_only",
    "guard",
    "diagnostics",
    "gradients_dtype",
    "output_dtype",
    "ema_dtype",
];

/// Each of [`CONFIG_FIELDS`]' values as JSON text (`absent` for none).
fn config_fields(config: &Config) -> Vec<String> {
    let json = crate::checkpoint::config_json(config);
    CONFIG_FIELDS.iter().map(|k| json.get(*k).map_or("absent".into(), |v| v.to_string())).collect()
}

fn layout_fingerprint(layout: &Layout) -> u64 {
    let text: Vec<String> = layout.leaves().iter().map(|l| format!("{:?}/{}/{:?}", l.name, l.len, l.shape)).collect();
    fingerprint(&text.join(";"))
}

impl ShardedState {
    /// This rank's shard of a model with the global `layout`: the leaves `owned` (indices into
    /// `layout`, increasing; possibly none), their averages started from `init` (given for the
    /// owned leaves only, in their order; `Normal` draws over the owned leaves, so a run that
    /// must match a single-device one passes `Values` or `Zeros`).
    ///
    /// Collective: every rank calls it with the same config and global layout, and the ranks'
    /// `owned` lists must cover every leaf exactly once. Otherwise every rank gets
    /// [`Error::ShardMismatch`] naming the first difference; a rank whose own arguments are
    /// invalid gets that error, and the others a `ShardMismatch` naming it.
    pub fn new(
        kernels: &Arc<Kernels>,
        queue: &wgpu::Queue,
        layout: &Layout,
        owned: &[usize],
        config: Config,
        init: EmaInits,
        collective: &impl Collective,
    ) -> Result<ShardedState> {
        let (rank, size) = (collective.rank(), collective.size());
        let local = Self::build_local(kernels, queue, layout, owned, config, init);
        let ok = local.is_ok() as u64;
        let fields = config_fields(&config);
        let mut mine = vec![ok, layout_fingerprint(layout)];
        mine.extend(fields.iter().map(|f| fingerprint(f)));
        let all = collective.all_gather(&mine)?;
        let mismatch = |detail: String| Error::ShardMismatch { rank, size, detail };
        // A rank's own error names its problem best; the others hear which rank failed.
        let (local, inner) = local?;
        let words_per_rank = mine.len();
        // A collective of the user's own may answer with the wrong number of words.
        if size == 0 || all.len() != size * words_per_rank {
            return Err(Error::Collective {
                operation: "all_gather",
                message: format!("{} words from {size} ranks of {words_per_rank} words each", all.len()),
            });
        }
        for (other, words) in all.chunks(words_per_rank).enumerate() {
            if words[0] == 0 && other != rank {
                return Err(mismatch(format!("rank {other} could not build its shard (see its error)")));
            }
        }
        for (other, words) in all.chunks(words_per_rank).enumerate() {
            if let Some(i) = (2..words_per_rank).find(|&i| words[i] != all[i]) {
                let field = CONFIG_FIELDS[i - 2];
                return Err(mismatch(format!(
                    "rank {other}'s config differs from rank 0's in `{field}` (this rank: {})",
                    fields[i - 2]
                )));
            }
            if words[1] != all[1] {
                return Err(mismatch(format!(
                    "rank {other}'s layout differs from rank 0's (this rank: {} leaves, {} elements)",
                    layout.len(),
                    layout.total_elements()
                )));
            }
        }
        let mut owners = vec![0f64; layout.len()];
        for &i in owned {
            owners[i] = 1.0;
        }
        collective.all_reduce_sum(&mut owners)?;
        if let Some((i, &n)) = owners.iter().enumerate().find(|(_, &n)| n != 1.0) {
            return Err(mismatch(format!(
                "leaf `{}` is owned by {n} ranks; every leaf needs exactly one owner",
                layout.leaves()[i].name
            )));
        }
        let device = kernels.device().clone();
        let buffers = inner
            .as_ref()
            .map(|_| {
                crate::context::gpu_scope(&device, "allocating the sharded readback", || {
                    let buffer = |label, size, usage| {
                        device.create_buffer(&wgpu::BufferDescriptor {
                            label: Some(label),
                            size,
                            usage,
                            mapped_at_creation: false,
                        })
                    };
                    let map = wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST;
                    let copy = wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
                    (buffer("bloop sharded sums", READBACK_BYTES, map), buffer("bloop sharded stamp", 4, copy))
                })
            })
            .transpose()?;
        let (readback, stamp) = buffers.unzip();
        Ok(ShardedState {
            rank,
            size,
            global: layout.clone(),
            owned: owned.to_vec(),
            local,
            config,
            queue: queue.clone(),
            device,
            inner,
            readback,
            stamp,
            phase: Phase::Idle,
            steps: 0,
            last: None,
        })
    }

    /// Validates this rank's own arguments and builds the state of its leaves.
    fn build_local(
        kernels: &Arc<Kernels>,
        queue: &wgpu::Queue,
        layout: &Layout,
        owned: &[usize],
        config: Config,
        init: EmaInits,
    ) -> Result<(Option<Layout>, Option<BloopState>)> {
        config.validate()?;
        // The hierarchy's partial sums and finalize stage are its own; the exchange of sums
        // knows the other methods' eight.
        if config.method == crate::config::Method::Hierarchy {
            return Err(Error::InvalidConfig {
                field: "method",
                problem: "hierarchy cannot be sharded yet; run it on one device".into(),
            });
        }
        // The fused optimizer counts its steps in the ordinary finalize stage, which a sharded
        // step replaces; each rank steps its own parameters with the directions instead.
        if config.optimizer.is_some() {
            return Err(Error::Optimizer(
                "a sharded step does not fuse an optimizer: record the direction and step the parameters separately"
                    .into(),
            ));
        }
        if let Some(&i) = owned.iter().find(|&&i| i >= layout.len()) {
            return Err(Error::InvalidLayout(format!(
                "owned leaf index {i} is past the layout's {} leaves",
                layout.len()
            )));
        }
        if owned.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::InvalidLayout(format!("owned leaf indices must increase, got {owned:?}")));
        }
        if owned.is_empty() {
            return Ok((None, None));
        }
        let local = Layout::from_leaves(owned.iter().map(|&i| layout.leaves()[i].clone()))?;
        let state = BloopState::new(kernels, queue, &local, config, init)?;
        Ok((Some(local), Some(state)))
    }

    /// This rank's index.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// How many ranks take part.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The whole model's layout.
    pub fn global_layout(&self) -> &Layout {
        &self.global
    }

    /// This rank's leaves, as indices into the global layout.
    pub fn owned(&self) -> &[usize] {
        &self.owned
    }

    /// The layout of this rank's leaves (`None` when it owns none): pools and external buffers
    /// of this rank follow it.
    pub fn local_layout(&self) -> Option<&Layout> {
        self.local.as_ref()
    }

    /// The state of this rank's leaves, for its averages, diagnostics (global scalars) and
    /// checkpoints; `None` when it owns none.
    pub fn local_state(&self) -> Option<&BloopState> {
        self.inner.as_ref()
    }

    /// The configuration every rank shares.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Completed sharded steps.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The global sums and decision of the last exchange.
    pub fn last_sums(&self) -> Option<GlobalSums> {
        self.last
    }

    /// Bindings over a pool made for [`ShardedState::local_layout`] (`None` for an empty shard).
    pub fn bind_pool(&self, pool: Option<&GradientPool>) -> Result<ShardedBindings> {
        let inner = match (&self.inner, pool) {
            (Some(state), Some(pool)) => Some(state.bind_pool(pool)?),
            (state, pool) => self.check_empty(state.is_some(), pool.is_some())?,
        };
        Ok(ShardedBindings { inner })
    }

    /// Bindings over the user's buffers of this rank's leaves (`None` for an empty shard).
    pub fn bind_external(&self, gradients: Option<&ExternalGradients>) -> Result<ShardedBindings> {
        let inner = match (&self.inner, gradients) {
            (Some(state), Some(gradients)) => Some(state.bind_external(gradients)?),
            (state, gradients) => self.check_empty(state.is_some(), gradients.is_some())?,
        };
        Ok(ShardedBindings { inner })
    }

    /// No bindings, which is right only for a rank that owns no leaf and was given no buffers.
    fn check_empty(&self, owns: bool, given: bool) -> Result<Option<StepBindings>> {
        match (owns, given) {
            (false, false) => Ok(None),
            (false, true) => Err(Error::Mismatch(format!("rank {} owns no leaf, so it binds no buffers", self.rank))),
            _ => Err(Error::Mismatch(format!(
                "rank {} owns {} leaves and needs their buffers",
                self.rank,
                self.owned.len()
            ))),
        }
    }

    /// Whether the step needs the global sums: every method but mixing without guard and
    /// diagnostics.
    fn exchanges(&self) -> bool {
        Kind::of(&self.config) != Kind::Mixed || self.config.extras()
    }

    /// Phase 1: records the pass that computes this rank's partial sums, and a copy of them for
    /// [`ShardedState::exchange_sums`]. The caller submits the encoder before the exchange (an
    /// exchange without it is refused, not answered with zeros); `encoder` must be of the
    /// state's device.
    pub fn record_sums(&mut self, encoder: &mut wgpu::CommandEncoder, bindings: &ShardedBindings) -> Result<()> {
        if self.phase != Phase::Idle {
            return Err(Error::StepOrder("record_sums called before the previous step's record_apply"));
        }
        let exchanges = self.exchanges();
        if let Some((state, b)) = local(&mut self.inner, bindings)? {
            let kernels = b.variant_kernels().clone();
            let sharded = kernels.sharded(&self.device)?;
            let first = stage(
                &kernels.stages,
                if Kind::of(&self.config) == Kind::Mixed { Stage::Apply } else { Stage::Accumulate },
            );
            let mut pipelines = vec![(first, true)];
            if exchanges {
                pipelines.push((&sharded.local_totals, false));
            }
            state.record_pipelines(encoder, b, ("bloop sharded sums", None), &pipelines, false)?;
            if let (true, Some(readback), Some(stamp)) = (exchanges, &self.readback, &self.stamp) {
                encoder.copy_buffer_to_buffer(state.scalars_buffer(), SUMS_OFFSET, readback, 0, SUMS_BYTES);
                // The write lands at the next submit, before this encoder's commands run.
                self.queue.write_buffer(stamp, 0, bytemuck::bytes_of(&self.stamp_value()));
                encoder.copy_buffer_to_buffer(stamp, 0, readback, SUMS_BYTES, 4);
            }
        }
        self.phase = Phase::SumsRecorded;
        Ok(())
    }

    /// The stamp of the step being recorded: never 0, the readback's initial content.
    fn stamp_value(&self) -> u32 {
        (self.steps % u32::MAX as u64) as u32 + 1
    }

    /// Phase 2: waits for this rank's partial sums (one 32-byte readback: the step's only
    /// synchronisation), reduces them over every rank, decides the guard globally, and writes
    /// the global sums back through the queue. Collective: every rank calls it once per step.
    ///
    /// A rank whose encoder of `record_sums` was not submitted has no sums of this step: it
    /// gets [`Error::StepOrder`] instead of zeros (a step stamp copied along with the sums
    /// tells), and returns to before `record_sums`. The other ranks then wait in the
    /// collective or get its error, as with any rank that fails.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn exchange_sums(&mut self, collective: &impl Collective) -> Result<GlobalSums> {
        pollster::block_on(self.exchange_sums_async(collective))
    }

    /// [`ShardedState::exchange_sums`] as a future (the form for wasm: the readback is awaited,
    /// the collective's operations are the collective's own).
    pub async fn exchange_sums_async(&mut self, collective: &impl Collective) -> Result<GlobalSums> {
        if self.phase != Phase::SumsRecorded {
            return Err(Error::StepOrder("exchange_sums needs record_sums (and a submit) first"));
        }
        if !self.exchanges() {
            self.phase = Phase::Exchanged;
            self.last = Some(GlobalSums::default());
            return Ok(GlobalSums::default());
        }
        let mut sums = [0f64; 8];
        if let Some(readback) = &self.readback {
            let receiver = crate::readback::start_map(readback);
            let bytes = crate::readback::finish_map(&self.device, receiver, readback).await?;
            let words: &[f32] = bytemuck::cast_slice(&bytes);
            if words[SUMS_BYTES as usize / 4].to_bits() != self.stamp_value() {
                self.phase = Phase::Idle;
                return Err(Error::StepOrder(
                    "exchange_sums found no sums of this step: submit the encoder of record_sums first",
                ));
            }
            for (sum, &w) in sums.iter_mut().zip(words) {
                *sum = w as f64;
            }
        }
        collective.all_reduce_sum(&mut sums)?;
        let as_f32 = sums.map(|s| s as f32);
        let mut skip = [0f64];
        if self.config.guard {
            // As `finalize` decides on one device: a non-finite element anywhere, or sums that
            // are not finite in f32. The max makes the decision identical on every rank.
            skip[0] = (as_f32[7] != 0.0 || as_f32.iter().any(|s| !s.is_finite())) as u8 as f64;
            collective.all_reduce_max(&mut skip)?;
        }
        let skipped = skip[0] != 0.0;
        if let Some(state) = &self.inner {
            let scalars = state.scalars_buffer();
            self.queue.write_buffer(scalars, 8, bytemuck::bytes_of(&(skipped as u32)));
            self.queue.write_buffer(scalars, SUMS_OFFSET, bytemuck::cast_slice(&as_f32));
        }
        let global = GlobalSums {
            dots: sums[..4].try_into().unwrap_or_default(),
            grads: sums[4..].try_into().unwrap_or_default(),
            skipped,
        };
        self.last = Some(global);
        self.phase = Phase::Exchanged;
        Ok(global)
    }

    /// Phase 3: records the ratios' computation from the global sums and the pass that writes
    /// the direction and this rank's averages (zeros and untouched averages for a skipped step).
    pub fn record_apply(&mut self, encoder: &mut wgpu::CommandEncoder, bindings: &ShardedBindings) -> Result<()> {
        if self.phase != Phase::Exchanged {
            return Err(Error::StepOrder("record_apply needs exchange_sums first"));
        }
        let exchanges = self.exchanges();
        if let Some((state, b)) = local(&mut self.inner, bindings)? {
            let kernels = b.variant_kernels().clone();
            let mut pipelines = Vec::new();
            if exchanges {
                pipelines.push((&kernels.sharded(&self.device)?.decide_global, false));
            }
            if Kind::of(&self.config) != Kind::Mixed {
                pipelines.push((stage(&kernels.stages, Stage::Apply), true));
            } else if let Some((_, clear)) = kernels.stages.iter().find(|(s, _)| *s == Stage::Clear) {
                pipelines.push((clear, true));
            }
            state.record_pipelines(encoder, b, ("bloop sharded apply", None), &pipelines, true)?;
        }
        self.phase = Phase::Idle;
        self.steps += 1;
        Ok(())
    }
}

/// This rank's state and bindings, or neither for an empty shard.
fn local<'a>(
    inner: &'a mut Option<BloopState>,
    bindings: &'a ShardedBindings,
) -> Result<Option<(&'a mut BloopState, &'a StepBindings)>> {
    match (inner.as_mut(), bindings.inner.as_ref()) {
        (Some(state), Some(b)) => Ok(Some((state, b))),
        (None, None) => Ok(None),
        _ => Err(Error::Mismatch("these bindings were made for another shard".into())),
    }
}

fn stage(stages: &[(Stage, wgpu::ComputePipeline)], wanted: Stage) -> &wgpu::ComputePipeline {
    // Every variant runs accumulate or apply first, and apply (mixing: first) in any case.
    &stages.iter().find(|(s, _)| *s == wanted).unwrap_or(&stages[0]).1
}
