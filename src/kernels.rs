//! Compiled pipelines, built once per device and variant and shared by every state on it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::context::gpu_scope;
use crate::dtype::ElementTypes;
use crate::error::Result;
use crate::optimizer::Optimizer;
use crate::shaders::{slot_binding, Axes, Kind, OptVariant, Planes, Stage, Storage, Storages, Variant, SLOT_COUNTS};

pub(crate) use crate::shaders::{MAX_ARRAY_BUFFERS, MAX_SLOTS};

use crate::context::BINDING_ARRAY_FEATURES;

/// The binding-array lengths variants are compiled for (below [`KernelOptions::max_array_buffers`]
/// and the device's limit, and that most): a binding takes the shortest that holds its
/// windows, as slots do ([`SLOT_COUNTS`]), so that a step does not carry thousands of unused
/// entries per dispatch, which wgpu tracks on every bind.
pub(crate) const ARRAY_LENGTHS: [u32; 3] = [16, 256, MAX_ARRAY_BUFFERS];

/// Elements per tile on a GPU (`KernelOptions::tile_len`): 16 per invocation of a
/// 256-invocation workgroup, enough to amortise the workgroup reduction while keeping
/// thousands of workgroups in flight on large steps.
pub const TILE_LEN: u64 = 4096;

/// Elements per tile on a CPU adapter: 64 per invocation. llvmpipe runs each barrier of a
/// workgroup's reduction as a switch between coroutines, one per 8 lanes; on lavapipe (2
/// cores) the guarded `bloop` step went from 0.49 – 0.68 to 0.62 – 0.88 of the copy kernel's
/// bandwidth at 2^16 – 2^22 elements with these tiles (`BENCHMARKS.md`).
pub const CPU_TILE_LEN: u64 = 16384;

/// Invocations per workgroup (`WORKGROUP_SIZE` in `shaders/bindings.wgsl`).
pub(crate) const WORKGROUP_SIZE: u64 = 256;

/// Binding numbers of group 1 (see `shaders/bindings.wgsl`).
pub(crate) mod slot {
    pub const TILES: u32 = 0;
    pub const MAIN: u32 = 1;
    pub const AUX: u32 = 2;
    pub const MAIN_EMA: u32 = 3;
    pub const AUX_EMA: u32 = 4;
    pub const OUT: u32 = 5;
    pub const PARAMS: u32 = 6;
    pub const OPT_M: u32 = 7;
    pub const OPT_V: u32 = 8;
}

/// The switches of a config that select code (see [`Variant`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct VariantFlags {
    pub guard: bool,
    pub extras: bool,
    pub project_first: bool,
}

impl VariantFlags {
    pub fn of(config: &crate::config::Config) -> VariantFlags {
        VariantFlags { guard: config.guard, extras: config.extras(), project_first: config.project_first() }
    }
}

/// The pipelines of one variant, one per stage in the order they run.
pub(crate) struct VariantKernels {
    pub group0: wgpu::BindGroupLayout,
    pub group1: wgpu::BindGroupLayout,
    pub stages: Vec<(Stage, wgpu::ComputePipeline)>,
    pub variant: Variant,
    /// The sharded step's finalize pipelines (this rank's totals, then the global decision),
    /// built on the first sharded step.
    pub sharded: std::sync::OnceLock<ShardedFinalize>,
}

/// The two finalize pipelines of a sharded step ([`crate::sharded`]).
pub(crate) struct ShardedFinalize {
    pub local_totals: wgpu::ComputePipeline,
    pub decide_global: wgpu::ComputePipeline,
}

impl VariantKernels {
    /// The sharded finalize pipelines, compiled on first use.
    pub fn sharded(&self, device: &wgpu::Device) -> Result<&ShardedFinalize> {
        if let Some(built) = self.sharded.get() {
            return Ok(built);
        }
        let built = gpu_scope(device, "compiling the sharded finalize stage", || {
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some("bloop sharded finalize"),
                source: wgpu::ShaderSource::Wgsl(self.variant.sharded_finalize_source().into()),
            });
            let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some("bloop sharded finalize"),
                bind_group_layouts: &[Some(&self.group0)],
                immediate_size: 0,
            });
            let pipeline = |entry: &str| {
                device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(entry),
                    layout: Some(&layout),
                    module: &module,
                    entry_point: Some(entry),
                    compilation_options: Default::default(),
                    cache: None,
                })
            };
            ShardedFinalize { local_totals: pipeline("finalize"), decide_global: pipeline("decide_global") }
        })?;
        Ok(self.sharded.get_or_init(|| built))
    }
}

/// Choices a [`Kernels`] makes for its device.
#[derive(Clone, Copy, Debug)]
pub struct KernelOptions {
    /// Reduce with subgroup operations (`Features::SUBGROUP`).
    pub subgroups: bool,
    /// Store f16 as `array<f16>` (`Features::SHADER_F16`) instead of packed in `u32` words.
    pub native_f16: bool,
    /// The most buffers of each user-owned role (gradients, output, parameters) one dispatch
    /// binds, so that leaves in that many distinct buffers share a dispatch; never more than
    /// the device's `max_storage_buffers_per_shader_stage` allows (nor 16). A binding uses the
    /// smallest of 1, 4, 16 and that most that holds its buffers, so a variant is compiled in
    /// at most three slot counts. 1 records one dispatch per distinct buffer.
    pub max_slots: u32,
    /// Vector loads and stores (16 bytes) in f32 segments whose offsets are multiples of 4
    /// elements, where the variant has them ([`crate::shaders::Variant::vec4_able`]) and every
    /// bound range is a whole number of vec4s; scalar ones otherwise. Off: scalar everywhere
    /// (for comparisons and tests).
    pub vec4: bool,
    /// Bind the user's buffers as one binding array per role ([`BINDING_ARRAY_FEATURES`]), so
    /// that a step over any number of distinct buffers (up to [`KernelOptions::max_array_buffers`]
    /// windows of each role) takes one dispatch per stage. `None` chooses by the device's
    /// features: binding arrays where it has them and a binding needs more than one buffer
    /// per role (a pool or a flat buffer keeps the one-slot kernels, the same code either
    /// way), slots elsewhere. `Some(true)` forces them (binding steps on a device without the
    /// features is then refused with [`crate::Error::MissingFeatures`]); `Some(false)` keeps
    /// slots. [`crate::StepBindings::binding_arrays`] says which path a binding took.
    pub binding_arrays: Option<bool>,
    /// The most windows (a buffer, or a binding-sized part of one) of each user-owned role one
    /// binding array holds, and so one dispatch binds; further ones take more dispatches.
    /// At most 4096, and capped by the device's `max_binding_array_elements_per_shader_stage`
    /// shared by the roles' arrays.
    pub max_array_buffers: u32,
    /// Elements of work a workgroup takes per tile, rounded up to whole rounds of the
    /// workgroup (256 elements), at most 2^30. `None` picks by adapter: [`TILE_LEN`] on a GPU, which
    /// wants many workgroups in flight, and [`CPU_TILE_LEN`] on a CPU adapter, whose
    /// driver (llvmpipe) runs a workgroup's barriers as switches between its lanes' coroutines
    /// and so gains from fewer, larger tiles.
    pub tile_len: Option<u32>,
}

impl Default for KernelOptions {
    fn default() -> KernelOptions {
        KernelOptions {
            subgroups: true,
            native_f16: true,
            max_slots: 16,
            vec4: true,
            tile_len: None,
            binding_arrays: None,
            max_array_buffers: MAX_ARRAY_BUFFERS,
        }
    }
}

/// The library's pipelines on one device. Create one per device and share it (it is cheap to
/// clone the `Arc`); variants are compiled on first use and cached.
pub struct Kernels {
    device: wgpu::Device,
    /// Set by the device-lost callback: why the device was lost.
    lost: Arc<std::sync::OnceLock<String>>,
    subgroups: bool,
    native_f16: bool,
    max_slots: u32,
    vec4: bool,
    /// Elements per tile, whole rounds of the workgroup.
    tile_len: u64,
    /// [`KernelOptions::binding_arrays`] as asked for.
    binding_arrays: Option<bool>,
    /// Whether the device has [`BINDING_ARRAY_FEATURES`].
    has_binding_arrays: bool,
    max_array_buffers: u32,
    /// Compiled variants, shared with the sets made by [`Kernels::with_other_options`]: a
    /// variant's code depends on the variant alone, not on the options that chose it. One cell
    /// per variant, so that different variants compile on different threads at once and one
    /// variant only once.
    cache: Arc<Mutex<HashMap<Variant, VariantCell>>>,
}

/// Whether the library uses the binding arrays a device lists. SwiftShader (Chromium's, Vulkan
/// 1.3, 2026-12) lists every feature they need, but its steps through them came out NaN where
/// Mesa 25's lavapipe matched the f64 reference in every case of `tests/binding_arrays.rs`; it
/// keeps the slots, and forcing the arrays there is refused.
fn binding_arrays_trusted(adapter: &wgpu::AdapterInfo) -> bool {
    !adapter.name.contains("SwiftShader")
}

/// A variant's pipelines once compiled; locked while they compile.
type VariantCell = Arc<Mutex<Option<Arc<VariantKernels>>>>;

impl std::fmt::Debug for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernels")
            .field("subgroups", &self.subgroups)
            .field("tile_len", &self.tile_len)
            .field("compiled_variants", &self.compiled_variants())
            .finish()
    }
}

fn storage_entry(binding: u32, read_only: bool) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }
}

impl Kernels {
    /// Kernels for `device`, reducing with subgroup operations where the device has
    /// `Features::SUBGROUP` and storing f16 natively where it has `Features::SHADER_F16`.
    pub fn new(device: &wgpu::Device) -> Arc<Kernels> {
        Kernels::with_options(device, KernelOptions::default())
    }

    /// As [`Kernels::new`]; `use_subgroups = false` forces the shared-memory reduction even
    /// where subgroups exist (for comparisons and tests).
    pub fn with_subgroups(device: &wgpu::Device, use_subgroups: bool) -> Arc<Kernels> {
        Kernels::with_options(device, KernelOptions { subgroups: use_subgroups, ..Default::default() })
    }

    /// Kernels with explicit choices; each is used only where the device has the feature.
    ///
    /// Installs the device's lost callback (wgpu keeps one per device), so that every later
    /// call answers [`crate::Error::DeviceLost`] once the device is gone. A trainer that needs
    /// its own callback installs it after this and calls [`Kernels::report_device_lost`] from it.
    // On wasm wgpu's handles are neither Send nor Sync (one thread), so neither is this Arc;
    // the API keeps one type on every target.
    #[cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]
    pub fn with_options(device: &wgpu::Device, options: KernelOptions) -> Arc<Kernels> {
        let lost = Arc::new(std::sync::OnceLock::new());
        let flag = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            let _ = flag.set(format!("{reason:?}: {message}"));
        });
        let cache = Arc::new(Mutex::new(HashMap::new()));
        Kernels::sharing(device, lost, cache, options)
    }

    /// Kernels for the same device with other options, sharing this set's compiled variants
    /// (and its device-lost state): a variant compiled by either is compiled for both. For
    /// comparing options (tile lengths, slots, vector loads) without compiling a variant twice.
    pub fn with_other_options(&self, options: KernelOptions) -> Arc<Kernels> {
        Kernels::sharing(&self.device, self.lost.clone(), self.cache.clone(), options)
    }

    /// The set for `options` on `device` over the variant cache `cache`.
    #[cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]
    fn sharing(
        device: &wgpu::Device,
        lost: Arc<std::sync::OnceLock<String>>,
        cache: Arc<Mutex<HashMap<Variant, VariantCell>>>,
        options: KernelOptions,
    ) -> Arc<Kernels> {
        let features = device.features();
        let subgroups = options.subgroups && features.contains(wgpu::Features::SUBGROUP);
        let native_f16 = options.native_f16 && features.contains(wgpu::Features::SHADER_F16);
        let (max_slots, vec4) = (options.max_slots, options.vec4);
        let tile_len = match options.tile_len {
            Some(len) => len as u64,
            None if device.adapter_info().device_type == wgpu::DeviceType::Cpu => CPU_TILE_LEN,
            None => TILE_LEN,
        };
        let tile_len = tile_len.clamp(1, 1 << 30).next_multiple_of(WORKGROUP_SIZE);
        let has_binding_arrays =
            features.contains(BINDING_ARRAY_FEATURES) && binding_arrays_trusted(&device.adapter_info());
        Arc::new(Kernels {
            device: device.clone(),
            lost,
            subgroups,
            native_f16,
            max_slots,
            vec4,
            tile_len,
            binding_arrays: options.binding_arrays,
            has_binding_arrays,
            max_array_buffers: options.max_array_buffers.clamp(1, MAX_ARRAY_BUFFERS),
            cache,
        })
    }

    /// Records that the device was lost (for trainers that replaced the lost callback).
    pub fn report_device_lost(&self, why: impl Into<String>) {
        let _ = self.lost.set(why.into());
    }

    /// Why the device was lost, if it was.
    pub fn device_lost(&self) -> Option<&str> {
        self.lost.get().map(String::as_str)
    }

    pub(crate) fn check_device(&self) -> Result<()> {
        match self.lost.get() {
            Some(why) => Err(crate::Error::DeviceLost(why.clone())),
            None => Ok(()),
        }
    }

    /// The options the kernels were made with, as the device allows them (a feature it lacks
    /// reads as off).
    pub fn options(&self) -> KernelOptions {
        KernelOptions {
            subgroups: self.subgroups,
            native_f16: self.native_f16,
            max_slots: self.max_slots,
            vec4: self.vec4,
            tile_len: Some(self.tile_len as u32),
            binding_arrays: self.binding_arrays,
            max_array_buffers: self.max_array_buffers,
        }
    }

    /// Whether bindings here take binding arrays: `Some(true)` always, `None` where a binding
    /// needs more than one buffer per role ([`KernelOptions::binding_arrays`]), `Some(false)`
    /// never. Refused where the option forces them and the device lacks the features.
    pub(crate) fn binding_arrays(&self) -> Result<Option<bool>> {
        match self.binding_arrays {
            Some(true) if !self.has_binding_arrays => Err(crate::Error::MissingFeatures {
                what: "binding arrays of the user's buffers (KernelOptions::binding_arrays = Some(true))",
                missing: match BINDING_ARRAY_FEATURES - self.device.features() {
                    missing if missing.is_empty() => format!(
                        "{BINDING_ARRAY_FEATURES:?} (listed by {}, whose binding arrays of storage buffers give \
                         wrong values)",
                        self.device.adapter_info().name
                    ),
                    missing => format!("{missing:?}"),
                },
            }),
            None if !self.has_binding_arrays => Ok(Some(false)),
            other => Ok(other),
        }
    }

    /// Whether the device has what binding arrays need ([`BINDING_ARRAY_FEATURES`]).
    pub fn has_binding_arrays(&self) -> bool {
        self.has_binding_arrays
    }

    /// Elements of work per tile (`KernelOptions::tile_len`, as chosen for this adapter).
    pub fn tile_len(&self) -> u64 {
        self.tile_len
    }

    /// Whether reductions use subgroup operations.
    pub fn uses_subgroups(&self) -> bool {
        self.subgroups
    }

    /// Whether f16 values are stored as `array<f16>` (else packed in `u32` words).
    pub fn uses_native_f16(&self) -> bool {
        self.native_f16
    }

    /// The device the kernels were built for.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// How many variants have been compiled so far (by this set and those sharing its variants,
    /// [`Kernels::with_other_options`]).
    pub fn compiled_variants(&self) -> usize {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.values().filter(|cell| cell.lock().map(|c| c.is_some()).unwrap_or(false)).count()
    }

    /// Compiles every variant now instead of on first use (for start-up latency budgets), in
    /// the form a pool's bindings take (levels as planes of one buffer): with vector loads
    /// allowed, both forms of those that have them, since a binding whose ranges are not whole
    /// vec4s takes the scalar one.
    pub fn compile_all(&self) -> Result<()> {
        let f32_only = Storages::default();
        let mut variants: Vec<Variant> = Variant::all()
            .into_iter()
            .filter(|v| v.subgroups == self.subgroups && v.storages == f32_only && v.optimizer.is_none())
            .filter(|v| self.vec4 || !v.vec4)
            // A pool's one buffer per role never needs binding arrays.
            .filter(|v| v.array_buffers == 0)
            .map(|v| Variant { gradient_planes: true, state_planes: true, ..v })
            .collect();
        variants.dedup();
        variants.into_iter().try_for_each(|v| {
            // Variants past the device's limits are refused when asked for, not here.
            if v.slots != 1 || self.check_limits(v).is_err() {
                return Ok(());
            }
            self.compile(v).map(drop)
        })
    }

    /// The one-slot variant of a config on this device, with an optimizer fused into the apply
    /// stage or not, and the direction written or not (not compiled yet): one value on each axis
    /// of the table of variants ([`Axes::table`]), which [`Kernels::compile`] checks.
    pub(crate) fn describe(
        &self,
        kind: Kind,
        inputs_writable: bool,
        flags: VariantFlags,
        types: ElementTypes,
        optimizer: Option<&Optimizer>,
        write_out: bool,
    ) -> Variant {
        let VariantFlags { guard, extras, project_first } = flags;
        let storage = |d| Storage::of(d, self.native_f16);
        let storages =
            Storages { gradients: storage(types.gradients), output: storage(types.output), ema: storage(types.ema) };
        let optimizer =
            optimizer.map(|o| OptVariant { kind: o.kind(), params: storage(o.params), state: storage(o.state) });
        let subgroups = self.subgroups;
        // One slot until a binding asks for more; vector loads where the kernels allow them,
        // until a binding's windows say otherwise (a pool's never do).
        // Gradients and the state's levels as planes of one buffer, as a pool's are, until a
        // binding's leaves say otherwise.
        let variant = Variant {
            kind,
            inputs_writable,
            subgroups,
            guard,
            extras,
            storages,
            optimizer,
            write_out,
            project_first,
            gradient_planes: Planes::BOTH.gradients,
            state_planes: Planes::BOTH.state,
            ..Variant::PLAIN
        };
        Variant { vec4: self.vec4 && variant.vec4_able(), ..variant }
    }

    /// The slot counts bindings of `variant` may use here, smallest first: those of
    /// [`SLOT_COUNTS`] below the most that the kernels' option and the device's limits allow,
    /// and that most (`[1]` when only one fits).
    pub(crate) fn slot_counts(&self, variant: Variant) -> Vec<u32> {
        let most = (1..=self.max_slots.min(MAX_SLOTS))
            .rev()
            .find(|&slots| self.check_limits(Variant { slots: slots as u8, ..variant }).is_ok())
            .unwrap_or(1);
        let mut counts: Vec<u32> = SLOT_COUNTS.iter().map(|&s| s as u32).filter(|&s| s < most).collect();
        counts.push(most);
        counts
    }

    /// The binding-array lengths bindings of `variant` may use here, shortest first: those of
    /// [`ARRAY_LENGTHS`] below the most that [`KernelOptions::max_array_buffers`] and the
    /// device's `max_binding_array_elements_per_shader_stage` (shared by the variant's arrays)
    /// allow, and that most.
    pub(crate) fn array_lengths(&self, variant: Variant) -> Vec<u32> {
        let arrays = variant.bindings().iter().filter(|b| b.1).count().max(1) as u32;
        let elements = self.device.limits().max_binding_array_elements_per_shader_stage;
        let most = self.max_array_buffers.min(elements / arrays).max(1);
        let mut lengths: Vec<u32> = ARRAY_LENGTHS.into_iter().filter(|&n| n < most).collect();
        lengths.push(most);
        lengths
    }

    /// The variant's pipelines, compiled on first use; refused where the device's limits do not
    /// allow its bindings.
    pub(crate) fn compile(&self, variant: Variant) -> Result<Arc<VariantKernels>> {
        self.check_device()?;
        self.check_limits(variant)?;
        let cell = self.cache.lock().unwrap_or_else(|p| p.into_inner()).entry(variant).or_default().clone();
        let mut compiled = cell.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(kernels) = &*compiled {
            return Ok(kernels.clone());
        }
        // Every variant asked for is one of the table's, so the cross-compilation test's lists
        // (boxes of the same table) speak of what runs.
        assert!(
            variant.buildable() && Axes::table().contains(variant),
            "bloop: {variant:?} is outside the table of variants"
        );
        let kernels = Arc::new(gpu_scope(&self.device, "compiling kernels", || self.build(variant))?);
        *compiled = Some(kernels.clone());
        Ok(kernels)
    }

    /// Storage buffers a stage over tiles of `variant` binds: the scalars (an optimizer's
    /// schedule among them), the partials, the tile table, every binding of the state's roles
    /// once, and every binding of the user's roles once per slot. A fused optimizer through a
    /// pool binds at most 8 (PCGrad with Adam), as its moments are planes of one buffer too. A hierarchy of k auxiliary losses with
    /// one slot binds 6 with its gradients and averages as planes ([`Variant::gradient_planes`],
    /// [`Variant::state_planes`]), k + 6 with its averages alone as planes, 2k + 5 without.
    /// With binding arrays, the user's roles are arrays instead, which count against
    /// `max_binding_array_elements_per_shader_stage` ([`Kernels::array_elements`]).
    pub(crate) fn storage_buffers(variant: Variant) -> u32 {
        let slots = if variant.array_buffers > 0 { 0 } else { variant.slots as u32 };
        let roles: u32 = variant.bindings().iter().map(|&(_, user, _)| if user { slots } else { 1 }).sum();
        3 + roles
    }

    /// Buffers a stage binds through binding arrays: each user-owned role's array.
    pub(crate) fn array_elements(variant: Variant) -> u32 {
        variant.bindings().iter().filter(|b| b.1).count() as u32 * variant.array_buffers as u32
    }

    /// Refuses `variant` where the device allows fewer storage buffers per stage than it binds
    /// ([`Kernels::storage_buffers`]), or where its highest binding number is past
    /// `max_bindings_per_bind_group`, or its workgroups are larger than the device runs: at
    /// state or binding creation, with the limit's name.
    pub(crate) fn check_limits(&self, variant: Variant) -> Result<()> {
        let limits = self.device.limits();
        let what = || match variant.kind {
            Kind::Hierarchy(k) => format!("a hierarchy of {k} auxiliary losses"),
            _ => format!("the {:?} kernels with {} buffers per role", variant.kind, variant.slots),
        };
        let roles = variant.roles();
        let slots = variant.slots as u32;
        let storage = Kernels::storage_buffers(variant);
        if storage > limits.max_storage_buffers_per_shader_stage {
            return Err(crate::Error::ExceedsCount {
                what: what(),
                needed: storage,
                limit: limits.max_storage_buffers_per_shader_stage,
                limit_name: "max_storage_buffers_per_shader_stage",
            });
        }
        let highest = roles.iter().map(|r| r.1).max().unwrap_or(0);
        let bindings = slot_binding(highest, slots - 1) + 1;
        // Every stage runs WORKGROUP_SIZE invocations along x and reduces through
        // `scratch` (one vec4 per invocation, `shaders/reduce.wgsl`).
        let workgroup = WORKGROUP_SIZE as u32;
        let counts = [
            (bindings, limits.max_bindings_per_bind_group, "max_bindings_per_bind_group"),
            (
                Kernels::array_elements(variant),
                limits.max_binding_array_elements_per_shader_stage,
                "max_binding_array_elements_per_shader_stage",
            ),
            (workgroup, limits.max_compute_invocations_per_workgroup, "max_compute_invocations_per_workgroup"),
            (workgroup, limits.max_compute_workgroup_size_x, "max_compute_workgroup_size_x"),
            (16 * workgroup, limits.max_compute_workgroup_storage_size, "max_compute_workgroup_storage_size"),
        ];
        for (needed, limit, limit_name) in counts {
            if needed > limit {
                return Err(crate::Error::ExceedsCount { what: what(), needed, limit, limit_name });
            }
        }
        Ok(())
    }

    fn build(&self, variant: Variant) -> VariantKernels {
        let device = &self.device;
        let state_entries = vec![
            wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            },
            storage_entry(1, false),
            storage_entry(2, false),
        ];
        let group0 = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("bloop state"),
            entries: &state_entries,
        });
        let mut entries = vec![storage_entry(slot::TILES, true)];
        for (binding, user, writable) in variant.bindings() {
            if user && variant.array_buffers > 0 {
                entries.push(wgpu::BindGroupLayoutEntry {
                    count: std::num::NonZeroU32::new(variant.array_buffers as u32),
                    ..storage_entry(binding, !writable)
                });
                continue;
            }
            let copies = if user { variant.slots as u32 } else { 1 };
            entries.extend((0..copies).map(|s| storage_entry(slot_binding(binding, s), !writable)));
        }
        let group1 = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("bloop leaves"),
            entries: &entries,
        });
        let full = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("bloop step"),
            bind_group_layouts: &[Some(&group0), Some(&group1)],
            immediate_size: 0,
        });
        let state_only = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("bloop finalize"),
            bind_group_layouts: &[Some(&group0)],
            immediate_size: 0,
        });
        let pipeline = |stage: Stage, layout: &wgpu::PipelineLayout| {
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(stage.name()),
                source: wgpu::ShaderSource::Wgsl(variant.source(stage).into()),
            });
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(stage.name()),
                layout: Some(layout),
                module: &module,
                entry_point: Some(stage.name()),
                compilation_options: Default::default(),
                cache: None,
            })
        };
        let stages = variant
            .stages()
            .iter()
            .map(|&stage| {
                let layout = if stage == Stage::Finalize { &state_only } else { &full };
                (stage, pipeline(stage, layout))
            })
            .collect();
        VariantKernels { group0, group1, stages, variant, sharded: std::sync::OnceLock::new() }
    }
}
