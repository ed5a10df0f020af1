// Bindings and shared types of every stage. The host side is `src/kernels.rs` (layouts) and
// `src/plan.rs` (tiles); keep the three in step.

// Threads per workgroup. Each workgroup walks one tile (`KernelOptions::tile_len` elements).
const WORKGROUP_SIZE: u32 = 256u;

struct Params {
    ema: f32,
    lambda: f32,
    scale: f32,
    eps: f32,
    // Upper bound on the projection ratios (largest f32 when there is none).
    ratio_cap: f32,
    pad0: f32,
    pad1: f32,
    pad2: f32,
    // The optimizer's constants (`Optimizer::gpu_constants` in `src/optimizer.rs`; zeros
    // without one).
    momentum: f32,
    // 1 - dampening (SGD).
    dampening_c: f32,
    // 1 for Nesterov momentum (SGD).
    nesterov: f32,
    // L2 weight decay added to the gradient (SGD, Adam).
    weight_decay: f32,
    // Decoupled weight decay (AdamW).
    decoupled_decay: f32,
    // 1 - beta1, beta2, 1 - beta2, ln(beta1), ln(beta2), eps (Adam).
    beta1_c: f32,
    beta2: f32,
    beta2_c: f32,
    log_beta1: f32,
    log_beta2: f32,
    adam_eps: f32,
    pad3: f32,
    // A hierarchy's weights l_1 .. l_8 (zeros past its k, and for the other methods).
    lambdas: array<vec4<f32>, 2>,
}

// A run of elements of one leaf. Offsets are element indices into this dispatch's windows
// (for a user-owned role, into the window of the slot whose segments these are).
struct Segment {
    main: u32,
    aux: u32,
    main_ema: u32,
    aux_ema: u32,
    out: u32,
    weights: u32,
    opt_m: u32,
    opt_v: u32,
    len: u32,
}

// What the finalize stage leaves for the apply stage, and for diagnostics (`src/diagnostics.rs`
// reads this block as it is).
struct Scalars {
    // Projection ratio against the main EMA (after the cap).
    ratio_main: f32,
    // Projection ratio against the aux EMA (PCGrad only, after the cap).
    ratio_aux: f32,
    // 1 when the guard skipped this step: a gradient element was inf or NaN, or a sum overflowed.
    skip: u32,
    // Steps skipped since the state was created (or as restored from a checkpoint).
    skipped_steps: u32,
    // Sums over all leaves: <e, g_aux>, <e, e>, <a, g_main>, <a, a>.
    dots: vec4<f32>,
    // |g_main|^2, |g_aux|^2, <g_main, g_aux>, and the count of non-finite gradient elements
    // (computed with the guard or diagnostics on).
    grads: vec4<f32>,
#ifdef OPTIMIZER
    // In this buffer rather than one of its own, so that a fused optimizer binds one storage
    // buffer less (8 per stage in WebGPU).
    schedule: Schedule,
#endif
#ifdef HIERARCHY
    // The coefficients and ratios of `shaders/hierarchy_finalize.wgsl`.
    levels: array<f32, LEVEL_WORDS>,
#endif
}

#ifndef HIERARCHY
// One tile's partial sums, the same quantities as `Scalars.dots` and `Scalars.grads`.
struct Partial {
    dots: vec4<f32>,
    grads: vec4<f32>,
}
#endif

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> scalars: Scalars;
@group(0) @binding(2) var<storage, read_write> partials: array<Partial>;

// The optimizer's schedule (`BloopState::learning_rate_buffer`, at `LEARNING_RATE_OFFSET`):
// the learning rate, written by the user between steps, and the steps applied so far
// (advanced by the finalize stage of every step the guard lets through).
struct Schedule {
    lr: f32,
    step: u32,
    pad0: u32,
    pad1: u32,
}

// This dispatch's table, built by `src/plan.rs`: [0] its tile count, [1] the index of its
// first partial, [2] the word where segments start, [3 + 2 (t * SLOTS + s)] the first segment
// of tile t in slot s and [+ 1] its first narrow one (a tile's segments are ordered by slot,
// the wide ones first; one more entry closes the last tile), then 12 words per segment (its
// offsets, its length, its slot: the buffers' index in the binding arrays).
@group(1) @binding(0) var<storage, read> table: array<u32>;
// Each role's storage, declared with load_/store_ functions by the preprocessor from
// `storage_f32.wgsl`, `storage_f16.wgsl` or `storage_packed.wgsl`, for the element type the
// state stores it in. Inputs are writable only where the output shares their buffer: wgpu
// forbids binding one buffer read-only and writable in the same dispatch. With more than one
// slot, each user-owned role (gradients, output, weights) is declared once per slot
// (`g_main_s1` at binding 1 + 32, ...), and the code of the per-slot blocks is copied per
// slot with those names (`src/shaders.rs`). Each slot's segments of a tile run in a loop of
// their own, one after the other: choosing a slot per segment or per element would be a
// branch, which a CPU driver (llvmpipe) runs for every slot with its lanes masked off.
// With binding arrays (BINDING_ARRAYS), each user-owned role is instead one array of buffers
// at its slot-0 binding and the code is not copied: each segment record names its buffer
// (the word after its length), and walking to a segment points `buffer_index` at it, which
// the role's load_/store_ functions index with.
#ifdef BINDING_ARRAYS
var<private> buffer_index: u32;
#endif
#storage g_main 1
#storage g_aux 2
#storage main_ema 3
#storage aux_ema 4
#storage out 5
#storage weights 6
#storage opt_m 7
#storage opt_v 8
#ifdef HIERARCHY
#import hierarchy_bindings
#endif
#ifdef PACKED_F16
#import half_f16
#endif
#ifdef PACKED_BF16
#import half_bf16
#endif

// Bit test, because WGSL lets compilers assume that floats are finite.
fn is_finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

// The sums the guard and diagnostics need, for one pair of gradient elements.
fn gradient_sums(gm: f32, ga: f32) -> vec4<f32> {
    return vec4<f32>(gm * gm, ga * ga, gm * ga, select(1.0, 0.0, is_finite(gm) && is_finite(ga)));
}

// The EMA update of the reference code, `e + b * (g - e)`, in this order.
#scalar_and_vec4
fn ema_step$W(e: $F, g: $F) -> $F {
    return e + params.ema * (g - e);
}
#end_scalar_and_vec4

// `a * b` summed over its lanes: the product of one element, the dot product of four.
fn mul_sum(a: f32, b: f32) -> f32 {
    return a * b;
}

#ifdef VEC4
// `gradient_sums` of four pairs of elements.
fn gradient_sums4(gm: vec4<f32>, ga: vec4<f32>) -> vec4<f32> {
    let exp_mask = vec4<u32>(0x7f800000u);
    let finite = ((bitcast<vec4<u32>>(gm) & exp_mask) != exp_mask) & ((bitcast<vec4<u32>>(ga) & exp_mask) != exp_mask);
    let bad = select(vec4<f32>(1.0), vec4<f32>(0.0), finite);
    return vec4<f32>(dot(gm, gm), dot(ga, ga), dot(gm, ga), dot(bad, vec4<f32>(1.0)));
}

fn mul_sum4(a: vec4<f32>, b: vec4<f32>) -> f32 {
    return dot(a, b);
}

// Whether every role's offset of a segment is a multiple of 4 elements.
fn aligned(seg: Segment) -> bool {
    return ((seg.main | seg.aux | seg.main_ema | seg.aux_ema | seg.out | seg.weights | seg.opt_m | seg.opt_v) & 3u) == 0u;
}
#endif

// Index of this workgroup's tile in a dispatch that may be laid out in 2D (more tiles than
// one dimension allows).
fn tile_index(wg: vec3<u32>, num_wg: vec3<u32>) -> u32 {
    return wg.x + wg.y * num_wg.x;
}

fn tile_count() -> u32 {
    return table[0];
}

fn first_partial() -> u32 {
    return table[1];
}

// The segments of a tile in one slot: [x, y) the wide ones, [y, z) the narrow ones.
// A wide segment is walked by the whole workgroup, element `lid` then every
// WORKGROUP_SIZE-th, one segment after the other; a narrow one (at most a tile's rounds of
// elements, `plan::Plan::new`) by one invocation, from its first element to its last,
// WORKGROUP_SIZE segments at a time. Every segment walked costs each invocation at least one
// iteration, so a workgroup per tiny segment would cost a leaf of one element a whole round.
// A walk's steps: `for (var k = w.x; k < w.z; k = walk_next(w, k))`, then this invocation's
// segment (`walk_index`, past z: none) and its elements (`walk_lane`: first, stride).
fn slot_walk(tile: u32, slot: u32) -> vec3<u32> {
    let at = 3u + 2u * (tile * SLOTS + slot);
    return vec3<u32>(table[at], table[at + 1u], table[at + 2u]);
}

fn walk_next(w: vec3<u32>, k: u32) -> u32 {
    return select(k + 1u, k + WORKGROUP_SIZE, k >= w.y);
}

fn walk_index(w: vec3<u32>, k: u32, lid: u32) -> u32 {
    return select(k, k + lid, k >= w.y);
}

fn walk_lane(w: vec3<u32>, k: u32, lid: u32) -> vec2<u32> {
    return select(vec2<u32>(lid, WORKGROUP_SIZE), vec2<u32>(0u, 1u), k >= w.y);
}

fn segment(index: u32) -> Segment {
    let at = table[2] + index * 12u;
#ifdef BINDING_ARRAYS
    buffer_index = table[at + 9u];
#endif
    return Segment(
        table[at], table[at + 1u], table[at + 2u], table[at + 3u], table[at + 4u],
        table[at + 5u], table[at + 6u], table[at + 7u], table[at + 8u],
    );
}

#ifdef HIERARCHY
#ifdef BINDING_ARRAYS
// A wide segment's record (index below the walk's y): its first word and length, the same for
// every invocation (`wide_then_narrow` in `src/shaders.rs`).
fn wide_record(index: u32) -> vec2<u32> {
    let at = segment_at(index);
    buffer_index = table[at + LEN_AT + 1u];
    return vec2<u32>(at, table[at + LEN_AT]);
}
#endif

// As `walk_segment` for a hierarchy's records: the first word of this invocation's record and
// its length (0 past the walk's end); with binding arrays, `buffer_index` points at its
// buffers.
fn walk_record(w: vec3<u32>, k: u32, lid: u32) -> vec2<u32> {
    let index = walk_index(w, k, lid);
    let at = segment_at(min(index, w.z - 1u));
#ifdef BINDING_ARRAYS
    buffer_index = table[at + LEN_AT + 1u];
#endif
    return vec2<u32>(at, select(0u, table[at + LEN_AT], index < w.z));
}
#endif

// This invocation's segment at step k of walk w (one of no elements past the walk's end);
// with binding arrays, `segment` points `buffer_index` at its buffers.
fn walk_segment(w: vec3<u32>, k: u32, lid: u32) -> Segment {
    let index = walk_index(w, k, lid);
    var seg = segment(min(index, w.z - 1u));
    seg.len = select(0u, seg.len, index < w.z);
    return seg;
}
