//! WGSL sources and the variants the library builds from them.
//!
//! Each stage is a `.wgsl` file in `shaders/`. A small preprocessor resolves `#import name`
//! (another file of that folder) and `#ifdef NAME` / `#ifndef NAME` / `#else` / `#endif`, so
//! one source serves every method without runtime branches in the hot loops; and it copies the
//! code that touches the user's buffers once per slot (`#per_slot`, `#each_slot`), since WGSL
//! cannot pass a storage buffer to a function. A `#scalar_and_vec4` block is written once for
//! one element per invocation and emitted again for four when the variant has vector loads.

use std::collections::HashSet;

pub use crate::config::Kind;
use crate::optimizer::OptKind;

const SOURCES: &[(&str, &str)] = &[
    ("bindings", include_str!("../shaders/bindings.wgsl")),
    ("reduce", include_str!("../shaders/reduce.wgsl")),
    ("accumulate", include_str!("../shaders/accumulate.wgsl")),
    ("finalize", include_str!("../shaders/finalize.wgsl")),
    ("apply", include_str!("../shaders/apply.wgsl")),
    ("clear", include_str!("../shaders/clear.wgsl")),
    ("half_f16", include_str!("../shaders/half_f16.wgsl")),
    ("half_bf16", include_str!("../shaders/half_bf16.wgsl")),
    ("storage_f32", include_str!("../shaders/storage_f32.wgsl")),
    ("storage_f16", include_str!("../shaders/storage_f16.wgsl")),
    ("storage_packed", include_str!("../shaders/storage_packed.wgsl")),
    ("hierarchy_bindings", include_str!("../shaders/hierarchy_bindings.wgsl")),
    ("hierarchy_accumulate", include_str!("../shaders/hierarchy_accumulate.wgsl")),
    ("hierarchy_finalize", include_str!("../shaders/hierarchy_finalize.wgsl")),
    ("hierarchy_apply", include_str!("../shaders/hierarchy_apply.wgsl")),
];

/// How a role's elements are laid out for the shader.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Storage {
    /// `array<f32>`.
    #[default]
    F32,
    /// `array<f16>` through `Features::SHADER_F16`.
    F16,
    /// f16 pairs in `u32` words (`unpack2x16float` / `pack2x16float`), for adapters without it.
    PackedF16,
    /// bf16 pairs in `u32` words.
    PackedBf16,
}

impl Storage {
    /// The storage of `dtype`, native f16 or packed as `native_f16` says.
    pub fn of(dtype: crate::dtype::DType, native_f16: bool) -> Storage {
        match dtype {
            crate::dtype::DType::F32 => Storage::F32,
            crate::dtype::DType::F16 if native_f16 => Storage::F16,
            crate::dtype::DType::F16 => Storage::PackedF16,
            crate::dtype::DType::Bf16 => Storage::PackedBf16,
        }
    }

    fn template(self) -> (&'static str, &'static str) {
        match self {
            Storage::F32 => ("storage_f32", ""),
            Storage::F16 => ("storage_f16", ""),
            Storage::PackedF16 => ("storage_packed", "f16"),
            Storage::PackedBf16 => ("storage_packed", "bf16"),
        }
    }

    fn packed(self) -> bool {
        matches!(self, Storage::PackedF16 | Storage::PackedBf16)
    }
}

/// The storage of each role.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Storages {
    /// Storage of both gradients.
    pub gradients: Storage,
    /// Storage of the output.
    pub output: Storage,
    /// Storage of the averages.
    pub ema: Storage,
}

/// The optimizer fused into the apply stage, and how it stores parameters and state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OptVariant {
    /// The update rule's kernels.
    pub kind: OptKind,
    /// How the parameters are stored.
    pub params: Storage,
    /// How the optimizer's state is stored.
    pub state: Storage,
}

/// Everything that changes the generated code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Variant {
    /// The computation.
    pub kind: Kind,
    /// The output shares a buffer with an input, so the inputs must be bound writable.
    pub inputs_writable: bool,
    /// Reduce with subgroup operations (`Features::SUBGROUP`) instead of a shared-memory tree.
    pub subgroups: bool,
    /// Skip steps with non-finite gradients: zeros out, averages untouched, counter increased.
    pub guard: bool,
    /// Sum the gradients' norms and non-finite elements (for the guard and for diagnostics).
    pub extras: bool,
    /// How gradients, output and averages are stored.
    pub storages: Storages,
    /// An optimizer applied to the parameters in the apply stage.
    pub optimizer: Option<OptVariant>,
    /// Whether the direction is written (only an optimizer's variant may skip it).
    pub write_out: bool,
    /// Project on the averages of the previous steps, then update them (`Order::ProjectFirst`).
    pub project_first: bool,
    /// Buffers per user-owned role one dispatch binds (one of [`SLOT_COUNTS`]): each segment
    /// names its slot, and its element loop is compiled once per slot with that slot's
    /// bindings, so leaves in that many distinct buffers share a dispatch without a branch per
    /// element.
    pub slots: u8,
    /// f32 roles are declared as `array<vec4<f32>>`, and segments whose offsets are all
    /// multiples of 4 elements move whole vec4s (only where [`Variant::vec4_able`], and only
    /// for bindings whose every window is a whole number of vec4s, so that a single element
    /// is a component of one).
    pub vec4: bool,
    /// The gradients (`g_main` and `g_aux`, or a hierarchy's `g_0 .. g_k`) are planes of one
    /// binding: every leaf's lie in one buffer, near enough for one window (a pool's do), so a
    /// dispatch binds one buffer for all of them, whatever the number of levels.
    pub gradient_planes: bool,
    /// The state's averages (`main_ema` and `aux_ema`, or a hierarchy's `e_0 .. e_{k-1}`) are
    /// planes of one binding, and so are the optimizer's moments (`opt_m`, `opt_v`): the state
    /// allocates each leaf's planes next to each other ([`crate::layout`]'s plane packing).
    pub state_planes: bool,
}

/// The stages a step runs, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Dot products of the averages with the gradients, one partial sum per tile.
    Accumulate,
    /// One workgroup sums the partials into the ratios (and the guard's decision).
    Finalize,
    /// Writes the direction and the averages.
    Apply,
    /// Zeros the output of a skipped step (mixing with the guard only).
    Clear,
}

impl Stage {
    /// The stage's file name in `shaders/` and entry point.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Accumulate => "accumulate",
            Stage::Finalize => "finalize",
            Stage::Apply => "apply",
            Stage::Clear => "clear",
        }
    }
}

/// The guard and the gradients' sums, one axis: the guard needs the sums, diagnostics alone
/// ask for the sums only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Sums {
    /// [`Variant::guard`].
    pub guard: bool,
    /// [`Variant::extras`].
    pub extras: bool,
}

impl Sums {
    /// Neither the guard nor the sums.
    pub const NONE: Sums = Sums { guard: false, extras: false };
    /// The sums for diagnostics, without the guard.
    pub const DIAGNOSTICS: Sums = Sums { guard: false, extras: true };
    /// The guard and its sums.
    pub const GUARD: Sums = Sums { guard: true, extras: true };
}

/// Which levels are planes of one binding, one axis ([`Variant::gradient_planes`],
/// [`Variant::state_planes`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Planes {
    /// The gradients are planes of one binding.
    pub gradients: bool,
    /// The averages (and an optimizer's moments) are planes of one binding.
    pub state: bool,
}

impl Planes {
    /// One binding per level.
    pub const NONE: Planes = Planes { gradients: false, state: false };
    /// The state's levels as planes, the gradients in the user's buffers.
    pub const STATE: Planes = Planes { gradients: false, state: true };
    /// Both, as a pool's bindings have them.
    pub const BOTH: Planes = Planes { gradients: true, state: true };
}

const TWO_LOSS: [Kind; 4] = [Kind::Project, Kind::RatioOnly, Kind::PcGrad, Kind::Mixed];
/// The computations that keep averages of the main gradient (the paper's order applies).
const WITH_AVERAGES: [Kind; 3] = [Kind::Project, Kind::RatioOnly, Kind::PcGrad];
const VEC4_KINDS: [Kind; 3] = [Kind::Project, Kind::RatioOnly, Kind::Mixed];
/// The hierarchy depths the lists compile: 1 to 4 and the largest.
const LISTED_HIERARCHIES: [Kind; 5] =
    [Kind::Hierarchy(1), Kind::Hierarchy(2), Kind::Hierarchy(3), Kind::Hierarchy(4), Kind::Hierarchy(MAX_LEVELS)];
const MAX_LEVELS: u8 = crate::config::MAX_LEVELS as u8;
const HALVES: [Storage; 3] = [Storage::F16, Storage::PackedF16, Storage::PackedBf16];
const STORAGES: [Storage; 4] = [Storage::F32, Storage::F16, Storage::PackedF16, Storage::PackedBf16];
const OPT_KINDS: [OptKind; 3] = [OptKind::Sgd, OptKind::Momentum, OptKind::Adam];
const SUMS: [Sums; 3] = [Sums::NONE, Sums::DIAGNOSTICS, Sums::GUARD];
const GUARD_OR_NOT: [Sums; 2] = [Sums::NONE, Sums::GUARD];

/// Each fused optimizer with f32 parameters and state.
fn f32_optimizers() -> Vec<Option<OptVariant>> {
    OPT_KINDS.iter().map(|&kind| Some(OptVariant { kind, params: Storage::F32, state: Storage::F32 })).collect()
}

/// A box of the table of variants: for each axis of [`Variant`], the values taken. The table
/// ([`Axes::table`]) takes every value on every axis; each list of variants ([`Variant::all`]
/// and its parts) is the union of a few boxes inside it, filtered by [`Variant::buildable`]; the
/// kernels compile only variants of the table ([`Axes::contains`]).
#[derive(Clone, Debug)]
pub struct Axes {
    /// The computation, hierarchy depth included.
    pub kinds: Vec<Kind>,
    /// [`Variant::inputs_writable`].
    pub inputs_writable: Vec<bool>,
    /// [`Variant::subgroups`].
    pub subgroups: Vec<bool>,
    /// The guard and the sums.
    pub sums: Vec<Sums>,
    /// [`Variant::storages`].
    pub storages: Vec<Storages>,
    /// [`Variant::optimizer`].
    pub optimizers: Vec<Option<OptVariant>>,
    /// [`Variant::write_out`].
    pub write_out: Vec<bool>,
    /// The order: [`Variant::project_first`].
    pub project_first: Vec<bool>,
    /// [`Variant::slots`].
    pub slots: Vec<u8>,
    /// [`Variant::vec4`].
    pub vec4: Vec<bool>,
    /// [`Variant::gradient_planes`] and [`Variant::state_planes`].
    pub planes: Vec<Planes>,
}

impl Axes {
    /// Every value of every axis: the variants a device may be asked to compile.
    pub fn table() -> Axes {
        let both = vec![false, true];
        let storages = STORAGES
            .iter()
            .flat_map(|&gradients| {
                STORAGES.iter().flat_map(move |&output| STORAGES.map(|ema| Storages { gradients, output, ema }))
            })
            .collect();
        let optimizers = std::iter::once(None)
            .chain(OPT_KINDS.iter().flat_map(|&kind| {
                STORAGES.iter().flat_map(move |&params| STORAGES.map(|state| Some(OptVariant { kind, params, state })))
            }))
            .collect();
        Axes {
            kinds: TWO_LOSS.into_iter().chain((1..=MAX_LEVELS).map(Kind::Hierarchy)).collect(),
            inputs_writable: both.clone(),
            subgroups: both.clone(),
            sums: SUMS.to_vec(),
            storages,
            optimizers,
            write_out: both.clone(),
            project_first: both.clone(),
            slots: (1..=MAX_SLOTS as u8).collect(),
            vec4: both,
            planes: vec![Planes::NONE, Planes::STATE, Planes::BOTH, Planes { gradients: true, state: false }],
        }
    }

    /// The box of one variant, [`Variant::PLAIN`], which the lists widen axis by axis.
    pub fn plain() -> Axes {
        let v = Variant::PLAIN;
        Axes {
            kinds: vec![v.kind],
            inputs_writable: vec![v.inputs_writable],
            subgroups: vec![v.subgroups],
            sums: vec![Sums { guard: v.guard, extras: v.extras }],
            storages: vec![v.storages],
            optimizers: vec![v.optimizer],
            write_out: vec![v.write_out],
            project_first: vec![v.project_first],
            slots: vec![v.slots],
            vec4: vec![v.vec4],
            planes: vec![Planes { gradients: v.gradient_planes, state: v.state_planes }],
        }
    }

    /// Whether `variant` lies in this box.
    pub fn contains(&self, variant: Variant) -> bool {
        let v = variant;
        self.kinds.contains(&v.kind)
            && self.inputs_writable.contains(&v.inputs_writable)
            && self.subgroups.contains(&v.subgroups)
            && self.sums.contains(&Sums { guard: v.guard, extras: v.extras })
            && self.storages.contains(&v.storages)
            && self.optimizers.contains(&v.optimizer)
            && self.write_out.contains(&v.write_out)
            && self.project_first.contains(&v.project_first)
            && self.slots.contains(&v.slots)
            && self.vec4.contains(&v.vec4)
            && self.planes.contains(&Planes { gradients: v.gradient_planes, state: v.state_planes })
    }

    /// The buildable variants of this box, every combination of its axes' values (the table
    /// itself has hundreds of millions: walk boxes, not the table).
    pub fn variants(&self) -> impl Iterator<Item = Variant> + '_ {
        let lengths = [
            self.kinds.len(),
            self.inputs_writable.len(),
            self.subgroups.len(),
            self.sums.len(),
            self.storages.len(),
            self.optimizers.len(),
            self.write_out.len(),
            self.project_first.len(),
            self.slots.len(),
            self.vec4.len(),
            self.planes.len(),
        ];
        let count: usize = lengths.iter().product();
        (0..count)
            .map(move |index| {
                // The index's digits in the mixed radix of the axes' lengths, kind slowest.
                let mut digits = [0; 11];
                let mut rest = index;
                for (digit, &length) in digits.iter_mut().zip(&lengths).rev() {
                    *digit = rest % length;
                    rest /= length;
                }
                let [kind, inputs_writable, subgroups, sums, storages, optimizer, write_out, project_first, slots, vec4, planes] =
                    digits;
                let (sums, planes) = (self.sums[sums], self.planes[planes]);
                Variant {
                    kind: self.kinds[kind],
                    inputs_writable: self.inputs_writable[inputs_writable],
                    subgroups: self.subgroups[subgroups],
                    guard: sums.guard,
                    extras: sums.extras,
                    storages: self.storages[storages],
                    optimizer: self.optimizers[optimizer],
                    write_out: self.write_out[write_out],
                    project_first: self.project_first[project_first],
                    slots: self.slots[slots],
                    vec4: self.vec4[vec4],
                    gradient_planes: planes.gradients,
                    state_planes: planes.state,
                }
            })
            .filter(|v| v.buildable())
    }

    /// The buildable variants of the union of `boxes`, each once, in the boxes' order.
    pub fn pick(boxes: &[Axes]) -> Vec<Variant> {
        let mut seen = HashSet::new();
        boxes.iter().flat_map(Axes::variants).filter(|v| seen.insert(*v)).collect()
    }
}

impl Storages {
    /// `storage` in every role.
    pub const fn uniform(storage: Storage) -> Storages {
        Storages { gradients: storage, output: storage, ema: storage }
    }
}

impl Variant {
    /// Projecting (BLOOP) in f32 with the guard, read-only inputs, subgroups and one slot: the
    /// defaults of the lists below where a field is not named.
    pub const PLAIN: Variant = Variant {
        kind: Kind::Project,
        inputs_writable: false,
        subgroups: true,
        guard: true,
        extras: true,
        storages: Storages { gradients: Storage::F32, output: Storage::F32, ema: Storage::F32 },
        optimizer: None,
        write_out: true,
        project_first: false,
        slots: 1,
        vec4: false,
        gradient_planes: false,
        state_planes: false,
    };

    /// The variants the cross-compilation test walks: every list below, each variant once.
    pub fn all() -> Vec<Variant> {
        let mut all = Variant::plain_lists();
        for list in [Variant::with_optimizers(), Variant::with_slots(), Variant::with_vec4(), Variant::with_planes()] {
            all.extend(list);
        }
        let mut seen = HashSet::new();
        all.retain(|v| seen.insert(*v));
        all
    }

    /// Per computation, without an optimizer, one slot, scalar loads, one binding per level:
    /// f32 with every input, reduction and guard setting; 16-bit storage (each kind of it in
    /// each role mix) with the guard off and on; the paper's order for the kinds with
    /// averages; hierarchies of 1 to 4 and 8 losses in both orders, and in 16-bit storage.
    fn plain_lists() -> Vec<Variant> {
        let plain = Axes::plain();
        let two_loss = Axes { kinds: TWO_LOSS.to_vec(), ..plain.clone() };
        let with_averages = Axes { kinds: WITH_AVERAGES.to_vec(), project_first: vec![true], ..plain.clone() };
        let hierarchies = Axes { kinds: LISTED_HIERARCHIES.to_vec(), ..plain.clone() };
        let uniform_half = |halves: &[Storage]| halves.iter().map(|&h| Storages::uniform(h)).collect::<Vec<_>>();
        let half_mixes: Vec<Storages> = HALVES
            .iter()
            .flat_map(|&h| {
                [
                    Storages { gradients: h, output: h, ema: Storage::F32 },
                    Storages::uniform(h),
                    Storages { gradients: h, output: Storage::F32, ema: Storage::F32 },
                    Storages { gradients: Storage::F32, output: h, ema: Storage::F32 },
                ]
            })
            .collect();
        let either = vec![false, true];
        Axes::pick(&[
            Axes {
                inputs_writable: either.clone(),
                subgroups: either.clone(),
                sums: SUMS.to_vec(),
                ..two_loss.clone()
            },
            Axes {
                inputs_writable: either.clone(),
                storages: half_mixes.clone(),
                sums: GUARD_OR_NOT.to_vec(),
                ..two_loss
            },
            Axes {
                inputs_writable: either.clone(),
                subgroups: either.clone(),
                sums: GUARD_OR_NOT.to_vec(),
                ..with_averages.clone()
            },
            Axes { storages: uniform_half(&[Storage::F16, Storage::PackedBf16]), ..with_averages },
            Axes {
                inputs_writable: either.clone(),
                subgroups: either.clone(),
                sums: GUARD_OR_NOT.to_vec(),
                project_first: either,
                ..hierarchies.clone()
            },
            Axes {
                storages: half_mixes
                    .into_iter()
                    .filter(|s| s.gradients == s.output && s.gradients != Storage::F32)
                    .collect(),
                ..hierarchies
            },
        ])
    }

    /// The variants of [`Variant::all`] that bind levels as planes of one buffer, as a pool's
    /// bindings do: each two-loss computation with gradients and averages as planes, or the
    /// averages alone (user buffers), with read-only and writable inputs and each guard and
    /// sums setting; hierarchies of 1 to 4 and 8 losses with gradients and averages as planes
    /// (f32 in both orders, with and without the guard, writable inputs; 16-bit storage; 4
    /// slots), and with the averages alone as planes.
    pub fn with_planes() -> Vec<Variant> {
        let both = Axes { planes: vec![Planes::BOTH], ..Axes::plain() };
        let hierarchies = Axes { kinds: LISTED_HIERARCHIES.to_vec(), ..both.clone() };
        Axes::pick(&[
            Axes {
                kinds: TWO_LOSS.to_vec(),
                inputs_writable: vec![false, true],
                sums: SUMS.to_vec(),
                planes: vec![Planes::BOTH, Planes::STATE],
                ..both.clone()
            },
            Axes { sums: GUARD_OR_NOT.to_vec(), project_first: vec![false, true], ..hierarchies.clone() },
            Axes { inputs_writable: vec![true], subgroups: vec![false], ..hierarchies.clone() },
            Axes { planes: vec![Planes::STATE], ..hierarchies.clone() },
            Axes { slots: vec![4], ..hierarchies.clone() },
            Axes {
                storages: HALVES.iter().map(|&h| Storages::uniform(h)).collect(),
                inputs_writable: vec![false, true],
                ..hierarchies
            },
        ])
    }

    /// Whether this variant has vector loads and stores (`vec4`): f32 storage in every role
    /// (an optimizer's parameters and state included), and a kind whose per-element code has a
    /// vec4 form (not PCGrad, not a hierarchy).
    pub fn vec4_able(self) -> bool {
        matches!(self.kind, Kind::Project | Kind::RatioOnly | Kind::Mixed)
            && self.optimizer.is_none_or(|o| o.params == Storage::F32 && o.state == Storage::F32)
            && self.storages == Storages::default()
    }

    /// The variants of [`Variant::all`] with vector loads and stores: each kind that has them,
    /// with read-only and writable inputs, both reductions, each guard and sums setting; the
    /// paper's order for those with averages; with 4 and 16 slots; and with each fused f32
    /// optimizer, the direction written or not.
    pub fn with_vec4() -> Vec<Variant> {
        let base = Axes { kinds: VEC4_KINDS.to_vec(), vec4: vec![true], ..Axes::plain() };
        let both_inputs_and_reductions =
            Axes { inputs_writable: vec![false, true], subgroups: vec![false, true], ..base.clone() };
        Axes::pick(&[
            Axes { sums: SUMS.to_vec(), ..both_inputs_and_reductions.clone() },
            Axes {
                kinds: vec![Kind::Project, Kind::RatioOnly],
                sums: GUARD_OR_NOT.to_vec(),
                project_first: vec![true],
                ..both_inputs_and_reductions
            },
            Axes { slots: vec![4], ..base.clone() },
            Axes { inputs_writable: vec![true], subgroups: vec![false], slots: vec![16], ..base.clone() },
            Axes { optimizers: f32_optimizers(), ..base.clone() },
            Axes {
                optimizers: f32_optimizers(),
                write_out: vec![false],
                inputs_writable: vec![true],
                slots: vec![4],
                ..base
            },
        ])
    }

    /// The variants of [`Variant::all`] with more than one slot: each two-loss kind with 4
    /// slots and read-only inputs and with 16 and writable inputs; mixing without sums; the
    /// paper's order; 16-bit storage; each optimizer (Adam also in packed f16); hierarchies of
    /// 2 (also in packed f16) and 8 losses.
    pub fn with_slots() -> Vec<Variant> {
        let base = Axes { slots: vec![4], ..Axes::plain() };
        let f32_opt = |kind| vec![Some(OptVariant { kind, params: Storage::F32, state: Storage::F32 })];
        let packed_f16 = Storages::uniform(Storage::PackedF16);
        Axes::pick(&[
            Axes { kinds: TWO_LOSS.to_vec(), ..base.clone() },
            Axes {
                kinds: TWO_LOSS.to_vec(),
                inputs_writable: vec![true],
                subgroups: vec![false],
                slots: vec![16],
                ..base.clone()
            },
            Axes { kinds: vec![Kind::Mixed], sums: vec![Sums::NONE], ..base.clone() },
            Axes { project_first: vec![true], ..base.clone() },
            Axes { storages: vec![Storages::uniform(Storage::PackedBf16)], ..base.clone() },
            Axes {
                kinds: vec![Kind::PcGrad],
                storages: vec![Storages { gradients: Storage::F16, output: Storage::F16, ema: Storage::F32 }],
                ..base.clone()
            },
            Axes { optimizers: f32_opt(OptKind::Adam), ..base.clone() },
            Axes {
                kinds: vec![Kind::Mixed],
                optimizers: f32_opt(OptKind::Sgd),
                write_out: vec![false],
                ..base.clone()
            },
            Axes { kinds: vec![Kind::PcGrad], optimizers: f32_opt(OptKind::Momentum), ..base.clone() },
            Axes {
                storages: vec![packed_f16],
                optimizers: vec![Some(OptVariant {
                    kind: OptKind::Adam,
                    params: Storage::PackedF16,
                    state: Storage::PackedF16,
                })],
                ..base.clone()
            },
            Axes { kinds: vec![Kind::Hierarchy(2)], storages: vec![Storages::default(), packed_f16], ..base.clone() },
            Axes { kinds: vec![Kind::Hierarchy(8)], project_first: vec![true], slots: vec![16], ..base },
        ])
    }

    /// The optimizer variants of [`Variant::all`]: each optimizer kind with projecting, PCGrad
    /// and mixing kernels, guard off and on, direction written or not, both reductions; with
    /// writable inputs; ratio_only with and without the guard; mixing with diagnostics only;
    /// and parameters and state in each 16-bit storage.
    pub fn with_optimizers() -> Vec<Variant> {
        let base = Axes { optimizers: f32_optimizers(), ..Axes::plain() };
        let mut boxes: Vec<Axes> = HALVES
            .iter()
            .map(|&h| Axes {
                storages: vec![Storages::uniform(h)],
                optimizers: OPT_KINDS
                    .iter()
                    .flat_map(|&kind| {
                        [(h, h), (h, Storage::F32), (Storage::F32, h)]
                            .map(|(params, state)| Some(OptVariant { kind, params, state }))
                    })
                    .collect(),
                ..base.clone()
            })
            .collect();
        boxes.extend([
            Axes {
                kinds: vec![Kind::Project, Kind::PcGrad, Kind::Mixed],
                sums: GUARD_OR_NOT.to_vec(),
                write_out: vec![true, false],
                subgroups: vec![true, false],
                ..base.clone()
            },
            Axes { inputs_writable: vec![true], ..base.clone() },
            // The other stage sets: ratio_only writing its average in the first pass (no
            // guard), and mixing summing for diagnostics only.
            Axes { kinds: vec![Kind::RatioOnly], sums: GUARD_OR_NOT.to_vec(), ..base.clone() },
            Axes { kinds: vec![Kind::Mixed], sums: vec![Sums::DIAGNOSTICS], ..base },
        ]);
        Axes::pick(&boxes)
    }

    /// Whether the generated code exists for this combination: the direction may go unwritten
    /// only where an optimizer consumes it, vector loads only where [`Variant::vec4_able`],
    /// f16 either native or packed in one variant (a device has `SHADER_F16` or not), no
    /// optimizer fused into a hierarchy's stages, and the guard only with its sums.
    pub fn buildable(self) -> bool {
        let storages = [self.storages.gradients, self.storages.output, self.storages.ema]
            .into_iter()
            .chain(self.optimizer.into_iter().flat_map(|o| [o.params, o.state]));
        let (mut native, mut packed) = (false, false);
        for storage in storages {
            native |= storage == Storage::F16;
            packed |= storage == Storage::PackedF16;
        }
        (self.write_out || self.optimizer.is_some())
            && (!self.vec4 || self.vec4_able())
            && !(native && packed)
            && !(matches!(self.kind, Kind::Hierarchy(_)) && self.optimizer.is_some())
            && (self.extras || !self.guard)
    }

    /// The stages this variant runs, in order: mixing needs no reduction unless the guard or
    /// diagnostics want the gradients' sums.
    /// With an optimizer, the finalize stage always runs before apply (it advances the
    /// optimizer's step count), and mixing sums the guard's norms in an accumulate stage, so
    /// no parameter is written before the step is known to be finite.
    pub fn stages(self) -> &'static [Stage] {
        if self.optimizer.is_some() {
            return match (self.kind, self.extras) {
                (Kind::Mixed, false) => &[Stage::Finalize, Stage::Apply],
                _ => &[Stage::Accumulate, Stage::Finalize, Stage::Apply],
            };
        }
        match (self.kind, self.extras, self.guard) {
            (Kind::Mixed, false, _) => &[Stage::Apply],
            (Kind::Mixed, true, false) => &[Stage::Apply, Stage::Finalize],
            (Kind::Mixed, true, true) => &[Stage::Apply, Stage::Finalize, Stage::Clear],
            _ => &[Stage::Accumulate, Stage::Finalize, Stage::Apply],
        }
    }

    fn defines(self) -> HashSet<&'static str> {
        let mut defines = HashSet::new();
        match self.kind {
            Kind::Hierarchy(_) => {
                defines.insert("HIERARCHY");
            }
            Kind::Project => {
                defines.extend(["MAIN_EMA", "PROJECT", "UPDATE_EMA_IN_APPLY"]);
            }
            // Without the guard, ratio_only writes the average in the first pass (28 bytes per
            // element); with it, only once the step is known to be finite (32 bytes).
            Kind::RatioOnly if self.guard => {
                defines.extend(["MAIN_EMA", "RATIO_ONLY", "UPDATE_EMA_IN_APPLY"]);
            }
            Kind::RatioOnly => {
                defines.extend(["MAIN_EMA", "RATIO_ONLY", "WRITE_EMA_IN_ACCUMULATE"]);
            }
            Kind::PcGrad => {
                defines.extend(["MAIN_EMA", "AUX_EMA", "PROJECT", "UPDATE_EMA_IN_APPLY"]);
            }
            Kind::Mixed => {
                defines.insert("MIXED");
                if self.extras && self.optimizer.is_none() {
                    defines.insert("MIXED_SUMS");
                }
            }
        }
        if let Some(opt) = self.optimizer {
            defines.insert("OPTIMIZER");
            let names: &[&'static str] = match opt.kind {
                OptKind::Sgd => &["SGD"],
                OptKind::Momentum => &["SGD", "OPT_M"],
                OptKind::Adam => &["ADAM", "OPT_M", "OPT_V"],
            };
            defines.extend(names.iter().copied());
        }
        if self.write_out {
            defines.insert("WRITE_OUT");
        }
        if self.extras {
            defines.insert("EXTRAS");
        }
        if self.guard {
            defines.insert("GUARD");
            if self.kind != Kind::Mixed || self.optimizer.is_some() {
                defines.insert("GUARD_APPLY");
            }
        }
        for (_, _, storage, _) in self.roles() {
            match storage {
                Storage::PackedF16 => defines.insert("PACKED_F16"),
                Storage::PackedBf16 => defines.insert("PACKED_BF16"),
                _ => false,
            };
        }
        // Apply stores pairs of elements where a written role packs two per word.
        let ema_written = self.kind != Kind::Mixed;
        let opt_packed =
            self.optimizer.is_some_and(|o| o.params.packed() || (o.kind != OptKind::Sgd && o.state.packed()));
        if (self.write_out && self.storages.output.packed())
            || (ema_written && self.storages.ema.packed())
            || opt_packed
        {
            defines.insert("PAIRS");
        }
        if self.project_first && self.kind != Kind::Mixed {
            defines.insert("PROJECT_FIRST");
        }
        if self.inputs_writable {
            defines.insert("INPUTS_WRITABLE");
        }
        if self.subgroups {
            defines.insert("SUBGROUPS");
        }
        if self.vec4 {
            assert!(self.vec4_able(), "{self:?} has no vec4 form");
            defines.insert("VEC4");
        }
        defines
    }

    /// The roles the user owns (gradients, output, parameters): each has one binding per slot.
    /// The averages and optimizer state are the state's own, one buffer set for every leaf, so
    /// they keep one binding.
    pub(crate) fn slot_roles(self) -> Vec<&'static str> {
        let user = |name: &str| ["g_main", "g_aux", "out", "weights"].contains(&name) || GRADIENT_ROLES.contains(&name);
        self.roles().into_iter().map(|r| r.0).filter(|name| user(name)).collect()
    }

    /// The roles this variant binds: (name, binding, storage, writable).
    /// The roles this variant binds: (name, binding, storage, writable). Roles bound as planes
    /// of one buffer ([`Variant::gradient_planes`], [`Variant::state_planes`]) have the binding
    /// of the first of them; a segment record keeps each role's offset in its own place
    /// (`Segment` in `shaders/bindings.wgsl`, [`hierarchy_slots`]) either way.
    pub(crate) fn roles(self) -> Vec<(&'static str, u32, Storage, bool)> {
        let s = self.storages;
        let binding = |planes: bool, first: u32, own: u32| if planes { first } else { own };
        let (gradient, state) = (self.gradient_planes, self.state_planes);
        if let Kind::Hierarchy(k) = self.kind {
            let k = k as u32;
            let mut roles: Vec<Role> = (0..=k)
                .map(|i| (GRADIENT_ROLES[i as usize], binding(gradient, 1, 1 + i), s.gradients, self.inputs_writable))
                .collect();
            let ema = |j| binding(state, hierarchy_slots::ema(k, 0), hierarchy_slots::ema(k, j));
            roles.extend((0..k).map(|j| (EMA_ROLES[j as usize], ema(j), s.ema, true)));
            roles.push(("out", hierarchy_slots::out(k), s.output, true));
            return roles;
        }
        let mut roles = vec![
            ("g_main", 1, s.gradients, self.inputs_writable),
            ("g_aux", binding(gradient, 1, 2), s.gradients, self.inputs_writable),
        ];
        if self.write_out {
            roles.push(("out", 5, s.output, true));
        }
        if let Some(opt) = self.optimizer {
            roles.push(("weights", 6, opt.params, true));
            let tensors = opt.kind.state_names().len();
            if tensors >= 1 {
                roles.push(("opt_m", 7, opt.state, true));
            }
            if tensors >= 2 {
                roles.push(("opt_v", binding(state, 7, 8), opt.state, true));
            }
        }
        if self.kind.has_main_ema() {
            roles.push(("main_ema", 3, s.ema, true));
        }
        if self.kind.has_aux_ema() {
            roles.push(("aux_ema", binding(state, 3, 4), s.ema, true));
        }
        roles
    }

    /// The distinct bindings of [`Variant::roles`] (group 1, slot 0's), each with whether its
    /// roles are the user's (bound once per slot) and whether it is writable.
    pub(crate) fn bindings(self) -> Vec<(u32, bool, bool)> {
        let user = self.slot_roles();
        let mut bindings: Vec<(u32, bool, bool)> = Vec::new();
        for (name, binding, _, writable) in self.roles() {
            if !bindings.iter().any(|b| b.0 == binding) {
                bindings.push((binding, user.contains(&name), writable));
            }
        }
        bindings
    }

    /// The finalize stage of a sharded step (`finalize` writing this rank's totals only, and
    /// `decide_global` turning the totals reduced over every rank into the ratios).
    pub fn sharded_finalize_source(self) -> String {
        let roles = self.roles();
        let mut defines = self.defines();
        defines.insert("SHARDED");
        let mut source = preprocess_slots(Stage::Finalize.name(), &defines, &roles, &self.slot_copies());
        if roles.iter().any(|r| r.2 == Storage::F16) {
            source.insert_str(0, "enable f16;\n");
        }
        source
    }

    /// The WGSL of one stage of this variant.
    pub fn source(self, stage: Stage) -> String {
        let roles = self.roles();
        let slots = self.slot_copies();
        let mut source = match self.kind {
            Kind::Hierarchy(k) => {
                let file = format!("hierarchy_{}", stage.name());
                let mut text = hierarchy_prelude(k as u32, self.project_first, self.extras, stage, &slots);
                text.push_str(&preprocess_slots(&file, &self.defines(), &roles, &slots));
                text
            }
            _ => preprocess_slots(stage.name(), &self.defines(), &roles, &slots),
        };
        if roles.iter().any(|r| r.2 == Storage::F16) {
            source.insert_str(0, "enable f16;\n");
        }
        source
    }

    fn slot_copies(self) -> SlotCopies {
        SlotCopies { count: self.slots as u32, roles: self.slot_roles() }
    }
}

/// The most slots a variant has: past this, the shaders' size (a copy of the segment loop per
/// slot) costs more compile time than the dispatches saved are worth.
pub(crate) const MAX_SLOTS: u32 = 16;

/// The slot counts variants are compiled for, with the most the device's limits allow (9 for
/// BLOOP at 32 storage buffers per stage): a binding picks the smallest that holds the distinct
/// buffers it needs, so a pool or a flat buffer keeps the one-slot kernels and only scattered
/// leaves pay for the larger shaders.
pub const SLOT_COUNTS: [u8; 3] = [1, 4, 16];

/// Binding numbers of slot s > 0 are slot 0's plus `s * SLOT_STRIDE` (above every role's
/// slot-0 binding, a hierarchy's included).
pub const SLOT_STRIDE: u32 = 32;

/// The binding of a role's slot `s`, given its slot-0 binding.
pub fn slot_binding(binding: u32, s: u32) -> u32 {
    binding + s * SLOT_STRIDE
}

/// Functions whose body touches a user-owned role and so is copied per slot (`#per_slot`
/// blocks in `shaders/`, and the hierarchy's generated element code).
const PER_SLOT_FUNCTIONS: [&str; 9] = [
    "element",
    "element4",
    "optimize",
    "optimize4",
    "store_element",
    "store_element4",
    "add_terms",
    "add_terms4",
    "accumulate_element",
];

/// How many copies of the per-slot code a source gets, and the roles bound once per slot.
pub(crate) struct SlotCopies {
    count: u32,
    roles: Vec<&'static str>,
}

impl SlotCopies {
    /// Slot `s`'s name for an identifier of slot 0: `SLOT` is the slot's number, and (past slot
    /// 0) its roles' load/store functions and the per-slot functions get an `_s<s>` suffix (a
    /// role's pair store keeps `_pair` last, as the storage templates name it).
    fn name(&self, token: &str, s: u32) -> Option<String> {
        if token == "SLOT" {
            return Some(format!("{s}u"));
        }
        if s == 0 {
            return None;
        }
        if PER_SLOT_FUNCTIONS.contains(&token) {
            return Some(format!("{token}_s{s}"));
        }
        for prefix in ["load_", "store_", "word_", "load4_", "store4_"] {
            let Some(rest) = token.strip_prefix(prefix) else { continue };
            let (role, pair) = match rest.strip_suffix("_pair") {
                Some(role) if prefix == "store_" => (role, "_pair"),
                _ => (rest, ""),
            };
            if self.roles.contains(&role) {
                return Some(format!("{prefix}{role}_s{s}{pair}"));
            }
        }
        None
    }

    /// `text` as slot `s` runs it: its number in, every identifier of a slot-0 role function
    /// renamed.
    fn rename(&self, text: &str, s: u32) -> String {
        let mut out = String::with_capacity(text.len() + 64);
        let mut token = String::new();
        let flush = |token: &mut String, out: &mut String| {
            match self.name(token, s) {
                Some(name) => out.push_str(&name),
                None => out.push_str(token),
            }
            token.clear();
        };
        for c in text.chars() {
            if c.is_ascii_alphanumeric() || c == '_' {
                token.push(c);
            } else {
                flush(&mut token, &mut out);
                out.push(c);
            }
        }
        flush(&mut token, &mut out);
        out
    }

    /// `text` followed by its copies for slots 1 ..
    fn copies(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in 1..self.count {
            out.push_str(&self.rename(text, s));
        }
        out
    }

    /// `body` once per slot, one after the other, each in a block of its own and reading its
    /// own slot's bindings.
    fn each(&self, body: &str) -> String {
        (0..self.count).map(|s| format!("{{\n{}}}\n", self.rename(body, s))).collect()
    }
}

/// Where a segment record's length word is, at the least: after the offsets of the eight
/// bindings of `Segment` in `shaders/bindings.wgsl` (a hierarchy's records put it later).
pub const SEGMENT_LEN_AT: u32 = 8;

/// Role names of a hierarchy's gradients `g_0 .. g_k` (`#storage` lines in
/// `shaders/hierarchy_bindings.wgsl`).
const GRADIENT_ROLES: [&str; crate::config::MAX_LEVELS + 1] = ["g0", "g1", "g2", "g3", "g4", "g5", "g6", "g7", "g8"];
/// Role names of a hierarchy's averages `e_0 .. e_{k-1}`.
const EMA_ROLES: [&str; crate::config::MAX_LEVELS] = ["e0", "e1", "e2", "e3", "e4", "e5", "e6", "e7"];

/// Binding numbers (group 1) of a hierarchy of k auxiliary losses: the tile table at 0, the
/// gradients `g_i` at `1 + i`, the averages `e_j` at `k + 2 + j`, the output at `2k + 2`. A
/// segment record holds each role's offset at `binding - 1` and the length at `2k + 2`.
pub mod hierarchy_slots {
    /// Binding of gradient `i`.
    pub fn gradient(i: u32) -> u32 {
        1 + i
    }
    /// Binding of average `j`.
    pub fn ema(k: u32, j: u32) -> u32 {
        k + 2 + j
    }
    /// Binding of the output.
    pub fn out(k: u32) -> u32 {
        2 * k + 2
    }
    /// Where a segment record's length is: after every offset, and never before the other
    /// methods' length word (`plan::LEN_AT`), so one table writer serves both.
    pub fn len_at(k: u32) -> u32 {
        out(k).max(super::SEGMENT_LEN_AT)
    }
    /// Words of one segment record.
    pub fn segment_words(k: u32) -> u32 {
        (len_at(k) + 1).max(12)
    }
    /// Entries of the Gram matrix's lower triangle (and of the products `<g_i, e_j>`, j < i).
    pub fn gram(k: u32) -> u32 {
        k * (k + 1) / 2
    }
    /// vec4s of one tile's partial sums: the Gram matrix, the products, then the gradients'
    /// norms and non-finite count.
    pub fn partial_vecs(k: u32) -> u32 {
        (2 * gram(k)).div_ceil(4) + 1
    }
    /// Words the finalize stage writes after the common scalars: the coefficients of the
    /// gradients (k + 1) and of the averages (k), then the ratios `<g_i, u_j> / (<u_j, u_j> +
    /// eps)` for i = 1..k, j < i, row by row.
    pub fn level_words(k: u32) -> u32 {
        (k + 1) + k + gram(k)
    }
}

/// The constants of a hierarchy's stages and its per-element code, unrolled over the levels so
/// that every value stays in a register (WGSL lets module-scope declarations come in any
/// order, so this goes first). `accumulate_element` adds one element's Gram and product terms
/// (and the guard's sums with `extras`) to a tile's partial; `element` computes one element's
/// direction and updated averages; `store_emas` / `store_emas_pair` write the averages.
fn hierarchy_prelude(k: u32, project_first: bool, extras: bool, stage: Stage, slots: &SlotCopies) -> String {
    use std::fmt::Write;
    let mut t = String::new();
    let _ = writeln!(t, "const LEVELS: u32 = {k}u;");
    let _ = writeln!(t, "const GRADS: u32 = {}u;", k + 1);
    let _ = writeln!(t, "const GRAM: u32 = {}u;", hierarchy_slots::gram(k));
    let _ = writeln!(t, "const PARTIAL_VECS: u32 = {}u;", hierarchy_slots::partial_vecs(k));
    let _ = writeln!(t, "const SEG_WORDS: u32 = {}u;", hierarchy_slots::segment_words(k));
    let _ = writeln!(t, "const LEN_AT: u32 = {}u;", hierarchy_slots::len_at(k));
    let _ = writeln!(t, "const OUT_AT: u32 = {}u;", hierarchy_slots::out(k) - 1);
    let _ = writeln!(t, "const LEVEL_WORDS: u32 = {}u;", hierarchy_slots::level_words(k));
    let ema_at = |j: u32| hierarchy_slots::ema(k, j) - 1;
    // Loads of g_0 .. g_k and e_0 .. e_{k-1}: e{j} is the average the projection uses,
    // e{j}_new the one stored.
    let mut loads = String::new();
    for l in 0..=k {
        let _ = writeln!(loads, "    let g{l} = load_{}(o.g{l} + i);", GRADIENT_ROLES[l as usize]);
    }
    for j in 0..k {
        let _ = writeln!(loads, "    let e{j}_old = load_{}(o.e{j} + i);", EMA_ROLES[j as usize]);
        let _ = writeln!(loads, "    let e{j}_new = ema_step(e{j}_old, g{j});");
        let _ = writeln!(loads, "    let e{j} = e{j}_{};", if project_first { "old" } else { "new" });
    }
    // The apply stage's coefficients (read from the scalars once per workgroup) and results.
    t.push_str("\nvar<private> cg: array<f32, GRADS>;\nvar<private> ce: array<f32, LEVELS>;\n");
    t.push_str("\nstruct Element {\n    d: f32,\n    e: array<f32, LEVELS>,\n}\n");
    // A segment's offsets, read from the table once per segment (the compiler cannot keep
    // table words across the loop's storage writes).
    t.push_str("\nstruct Offsets {\n");
    for l in 0..=k {
        let _ = writeln!(t, "    g{l}: u32,");
    }
    for j in 0..k {
        let _ = writeln!(t, "    e{j}: u32,");
    }
    t.push_str("}\n\nfn offsets(at: u32) -> Offsets {\n    return Offsets(");
    let words: Vec<String> = (0..=k)
        .map(|l| format!("table[at + {l}u]"))
        .chain((0..k).map(|j| format!("table[at + {}u]", ema_at(j))))
        .collect();
    t.push_str(&words.join(", "));
    t.push_str(");\n}\n");
    // The functions that load gradients, copied per slot.
    let per_slot_from = t.len();
    t.push_str("\nfn accumulate_element(o: Offsets, i: u32, acc: ptr<function, array<vec4<f32>, PARTIAL_VECS>>) {\n");
    t.push_str(&loads);
    let mut terms: Vec<String> = Vec::new();
    for a in 0..k {
        terms.extend((0..=a).map(|b| format!("e{a} * e{b}")));
    }
    for a in 1..=k {
        terms.extend((0..a).map(|b| format!("g{a} * e{b}")));
    }
    for (v, chunk) in terms.chunks(4).enumerate() {
        let mut c = chunk.to_vec();
        c.resize(4, "0.0".into());
        let _ = writeln!(t, "    (*acc)[{v}] += vec4<f32>({});", c.join(", "));
    }
    if extras {
        let non_finite: Vec<String> = (0..=k).map(|l| format!("select(1.0, 0.0, is_finite(g{l}))")).collect();
        let last = hierarchy_slots::partial_vecs(k) - 1;
        let _ = writeln!(t, "    (*acc)[{last}] += vec4<f32>(g0 * g0, g1 * g1, g0 * g1, {});", non_finite.join(" + "));
    }
    t.push_str("}\n\nfn element(o: Offsets, i: u32) -> Element {\n");
    t.push_str(&loads);
    let mut d: Vec<String> = (0..=k).map(|l| format!("cg[{l}] * g{l}")).collect();
    d.extend((0..k).map(|j| format!("- ce[{j}] * e{j}")));
    let news: Vec<String> = (0..k).map(|j| format!("e{j}_new")).collect();
    let _ = writeln!(
        t,
        "    return Element({}, array<f32, LEVELS>({}));",
        d.join(" + ").replace("+ -", "-"),
        news.join(", ")
    );
    t.push_str("}\n");
    let per_slot = t.split_off(per_slot_from);
    t.push_str(&slots.copies(&per_slot));
    t.push_str("\nfn store_emas(o: Offsets, i: u32, x: Element) {\n");
    for j in 0..k {
        let _ = writeln!(t, "    store_{}(o.e{j} + i, x.e[{j}]);", EMA_ROLES[j as usize]);
    }
    t.push_str("}\n");
    t.push_str("\nfn store_emas_pair(o: Offsets, i: u32, x: Element, y: Element, both: bool) {\n");
    for j in 0..k {
        let _ = writeln!(t, "    store_{}_pair(o.e{j} + i, x.e[{j}], y.e[{j}], both);", EMA_ROLES[j as usize]);
    }
    t.push_str("}\n");
    // Constant indices only, so the compiler keeps the partial sums and coefficients in
    // registers: the tile's reduction (accumulate imports `reduce`) and the coefficients' load.
    let vecs = hierarchy_slots::partial_vecs(k);
    if stage == Stage::Accumulate {
        t.push_str("\nfn write_partial(lanes: Lanes, acc: ptr<function, array<vec4<f32>, PARTIAL_VECS>>, at: u32) {\n");
        for v in 0..vecs {
            let _ = writeln!(t, "    let total{v} = workgroup_sum(lanes, (*acc)[{v}]);");
        }
        t.push_str("    if lanes.index == 0u {\n");
        for v in 0..vecs {
            let _ = writeln!(t, "        partials[at].v[{v}] = total{v};");
        }
        t.push_str("    }\n}\n");
    }
    t.push_str("\nfn load_coefficients() {\n");
    for l in 0..=k {
        let _ = writeln!(t, "    cg[{l}] = scalars.levels[{l}];");
    }
    for j in 0..k {
        let _ = writeln!(t, "    ce[{j}] = scalars.levels[{}];", k + 1 + j);
    }
    t.push_str("}\n");
    t
}

fn source_file(name: &str) -> &'static str {
    SOURCES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| *s)
        .unwrap_or_else(|| panic!("shaders/{name}.wgsl is not in SOURCES"))
}

/// A role's declaration: (name, binding, storage, writable).
type Role = (&'static str, u32, Storage, bool);

/// Expands imports (each file once), `#storage ROLE BINDING` (the role's storage template with
/// ROLE, BINDING, ACCESS and FORMAT filled in; nothing for a role the variant does not bind)
/// and conditional blocks, for a variant of one slot.
pub fn preprocess(entry: &str, defines: &HashSet<&str>, roles: &[Role]) -> String {
    preprocess_slots(entry, defines, roles, &SlotCopies { count: 1, roles: Vec::new() })
}

/// [`preprocess`] with slots (`SLOTS`, a constant of the source): a per-slot role's `#storage`
/// line declares one binding per slot, a `#per_slot` ... `#end_per_slot` block is followed by
/// its copies for the other slots, and an `#each_slot` ... `#end_each_slot` block is repeated
/// for every slot, with `SLOT` its number.
pub(crate) fn preprocess_slots(entry: &str, defines: &HashSet<&str>, roles: &[Role], slots: &SlotCopies) -> String {
    let mut out = format!("const SLOTS: u32 = {}u;\n", slots.count);
    let mut imported = HashSet::new();
    expand(entry, defines, roles, slots, &mut imported, &mut out);
    // Outside comments, which may name the tokens.
    let has_token = |line: &str| line.split("//").next().unwrap_or_default().contains('$');
    assert!(
        !out.lines().any(has_token),
        "a `$` template token outside a #scalar_and_vec4 block in shaders/{entry}.wgsl"
    );
    out
}

fn expand<'a>(
    name: &'a str,
    defines: &HashSet<&str>,
    roles: &[Role],
    slots: &SlotCopies,
    imported: &mut HashSet<&'a str>,
    out: &mut String,
) {
    if !imported.insert(name) {
        return;
    }
    // Each entry: (this block is emitted, some branch of it was taken).
    let mut stack: Vec<(bool, bool)> = Vec::new();
    // Open slot blocks: where their text starts in `out`, and whether each slot runs it.
    let mut slot_blocks: Vec<(usize, bool)> = Vec::new();
    // Open `#scalar_and_vec4` blocks: where their text starts in `out`.
    let mut width_blocks: Vec<usize> = Vec::new();
    let active = |stack: &[(bool, bool)]| stack.iter().all(|&(on, _)| on);
    for line in source_file(name).lines() {
        let trimmed = line.trim();
        if let Some(symbol) = trimmed.strip_prefix("#ifdef ") {
            let on = defines.contains(symbol.trim());
            stack.push((on, on));
        } else if let Some(symbol) = trimmed.strip_prefix("#ifndef ") {
            let on = !defines.contains(symbol.trim());
            stack.push((on, on));
        } else if trimmed == "#else" {
            let top = stack.last_mut().expect("#else without #ifdef");
            *top = (!top.1, true);
        } else if trimmed == "#endif" {
            stack.pop().expect("#endif without #ifdef");
        } else if !active(&stack) {
            continue;
        } else if trimmed == "#per_slot" || trimmed == "#each_slot" {
            slot_blocks.push((out.len(), trimmed == "#each_slot"));
        } else if trimmed == "#end_per_slot" || trimmed == "#end_each_slot" {
            let (start, each) = slot_blocks.pop().unwrap_or_else(|| panic!("{trimmed} without a start"));
            assert_eq!(each, trimmed == "#end_each_slot", "mismatched slot block in shaders/{name}.wgsl");
            let body = out.split_off(start);
            out.push_str(&if each { slots.each(&body) } else { slots.copies(&body) });
        } else if trimmed == "#scalar_and_vec4" {
            width_blocks.push(out.len());
        } else if trimmed == "#end_scalar_and_vec4" {
            let start = width_blocks.pop().unwrap_or_else(|| panic!("{trimmed} without a start"));
            let body = out.split_off(start);
            out.push_str(&widths(&body, defines.contains("VEC4")));
        } else if let Some(import) = trimmed.strip_prefix("#import ") {
            let import = SOURCES
                .iter()
                .map(|(n, _)| *n)
                .find(|n| *n == import.trim())
                .unwrap_or_else(|| panic!("unknown import `{import}` in shaders/{name}.wgsl"));
            expand(import, defines, roles, slots, imported, out);
        } else if let Some(spec) = trimmed.strip_prefix("#storage ") {
            let role = spec.split_whitespace().next().unwrap_or_default();
            if let Some(&(role, binding, storage, writable)) = roles.iter().find(|r| r.0 == role) {
                // Roles bound as planes of one buffer share the array of the binding's first
                // role, which alone declares it; the others get their functions.
                let owner = roles.iter().find(|r| r.1 == binding).expect("the role itself");
                assert!(
                    owner.2 == storage && owner.3 == writable,
                    "roles {} and {role} share binding {binding} with different storage",
                    owner.0
                );
                let (template, format) = storage.template();
                let mut local: HashSet<&str> = defines.clone();
                if writable {
                    local.insert("WRITABLE");
                }
                let mut text = String::new();
                expand(template, &local, roles, slots, &mut HashSet::new(), &mut text);
                let access = if writable { "read_write" } else { "read" };
                let copies = if slots.roles.contains(&role) { slots.count } else { 1 };
                let in_slot = |name: &str, s: u32| if s == 0 { name.to_string() } else { format!("{name}_s{s}") };
                for s in 0..copies {
                    let text = text
                        .replace("ARRAY", &in_slot(owner.0, s))
                        .replace("ROLE", &in_slot(role, s))
                        .replace("BINDING", &slot_binding(binding, s).to_string())
                        .replace("ACCESS", access)
                        .replace("FORMAT", format);
                    let declares = |line: &&str| owner.0 == role || !line.starts_with("@group");
                    out.extend(text.lines().filter(declares).flat_map(|line| [line, "\n"]));
                }
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(stack.is_empty(), "unterminated #ifdef in shaders/{name}.wgsl");
    assert!(slot_blocks.is_empty(), "unterminated slot block in shaders/{name}.wgsl");
    assert!(width_blocks.is_empty(), "unterminated #scalar_and_vec4 block in shaders/{name}.wgsl");
}

/// A `#scalar_and_vec4` block's text for one element per invocation (`$F` is `f32`, `$W`
/// empty) and, with vector loads, again for four (`vec4<f32>`, `4`): one source for both
/// widths, so they cannot drift apart. Such a block goes inside a `#per_slot` one, not around
/// it: the slot copies then rename both widths' functions.
fn widths(body: &str, vec4: bool) -> String {
    let width = |ty: &str, suffix: &str| body.replace("$F", ty).replace("$W", suffix);
    let mut text = width("f32", "");
    if vec4 {
        text.push_str(&width("vec4<f32>", "4"));
    }
    text
}
