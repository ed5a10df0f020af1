//! How a step's elements are cut into dispatches and tiles.
//!
//! Leaves may live in any mix of buffers. A dispatch binds, per binding, windows of at most
//! `max_storage_buffer_binding_size` bytes that start at aligned offsets: one for each binding of
//! the state's roles (averages, optimizer state), and one per slot for each binding of the
//! user's roles (gradients, output, parameters), so leaves in up to that many distinct buffers
//! share a dispatch, and each segment names its slot. A binding holds one role, or several as
//! planes of one buffer (a hierarchy's gradients, its averages), each with its own offsets. A pool or leaf larger than the binding limit is
//! split over several dispatches without the caller noticing.
//! Within a dispatch, each workgroup walks one tile: one or more segments (runs of elements,
//! described by element offsets relative to the windows) of at most the kernels' tile length
//! (`KernelOptions::tile_len`) of elements together (that many times the slots in a dispatch of
//! several slots). Small leaves share tiles, so a model with many tiny leaves (biases, norms)
//! does not pay a workgroup and a reduction for each. Nor does it pay a round of the workgroup
//! for each: leaves that lie back to back in every role (a pool's leaves of whole 256-byte
//! placements, flat user buffers) run as one segment, and a segment of at most a tile's rounds
//! of elements is narrow, walked by one invocation while its neighbours walk others
//! (`slot_walk` in `shaders/bindings.wgsl`). Before both, every segment cost each of the 256
//! invocations at least one iteration of each loop over it: about 30 us per leaf and step on
//! lavapipe (`BENCHMARKS.md`, "Many small leaves").

use std::num::NonZeroU64;

use crate::context::gpu_scope;
use crate::error::{Error, Result};
use crate::kernels::{slot, WORKGROUP_SIZE};
use crate::layout::LeafBuffer;
use crate::shaders::slot_binding;

/// The most slots the window check below makes room for (`kernels::MAX_SLOTS`).
const MAX_SLOTS: u32 = crate::kernels::MAX_SLOTS;

/// Words of one segment record (`Segment` in `shaders/bindings.wgsl`): the offsets by
/// binding - 1 (main, aux, main_ema, aux_ema, out, weights, opt_m, opt_v), the length at
/// [`LEN_AT`], padded to 12. A hierarchy's records are longer: the same shape with more
/// offsets (`hierarchy_slots::segment_words`).
const SEGMENT_WORDS: usize = 12;

/// Where a segment record's length is, at the least (`shaders::SEGMENT_LEN_AT`); its slot
/// follows.
const LEN_AT: usize = crate::shaders::SEGMENT_LEN_AT as usize;

/// Most offsets a segment record holds (a hierarchy's 2k + 1 roles with k = `MAX_LEVELS`).
const MAX_OFFSETS: usize = 2 * crate::config::MAX_LEVELS + 2;

/// Words before the tile starts in a dispatch's table: tile count, first partial, first
/// segment word.
const HEADER_WORDS: usize = 3;

/// Size of one tile's partial sums (`Partial` in `shaders/bindings.wgsl`: two vec4 of f32).
pub(crate) const PARTIAL_BYTES: u64 = 32;

/// Size of the buffer an unused slot binds: one element of any storage type.
const PLACEHOLDER_BYTES: u64 = 16;

/// Element offsets of one segment, indexed by binding - 1 (main, aux, main_ema, aux_ema, out,
/// params, opt_m, opt_v), its length, and the slot whose bindings hold its user-owned roles.
#[derive(Clone, Copy, Debug, Default)]
struct Segment {
    offsets: [u32; MAX_OFFSETS],
    len: u32,
    slot: u32,
}

/// The per-leaf buffers of one role, with the binding they go to (slot 0's, for a role bound
/// once per slot).
#[derive(Clone, Copy)]
pub(crate) struct RoleLeaves<'a> {
    /// The role's own binding: its offset's place in a segment record is `binding - 1`.
    pub binding: u32,
    /// The binding whose window holds the role: its own, or, for roles bound as planes of one
    /// buffer (`Variant::gradient_planes`, `Variant::state_planes`), the first plane's, whose
    /// one window then holds every plane's part of each piece.
    pub bound_at: u32,
    pub leaves: &'a [LeafBuffer],
    /// The user owns the buffers, which may be many: one binding per slot. The state's own
    /// roles (averages, optimizer state) have one buffer set for all leaves and one binding.
    pub per_slot: bool,
    /// Bound read-write (unused slots then bind a writable placeholder).
    pub writable: bool,
}

impl<'a> RoleLeaves<'a> {
    /// A role in the user's buffers, bound once per slot.
    pub fn user(binding: u32, leaves: &'a [LeafBuffer], writable: bool) -> RoleLeaves<'a> {
        RoleLeaves { binding, bound_at: binding, leaves, per_slot: true, writable }
    }

    /// A role in the state's own buffers (written by the step), bound once.
    pub fn state(binding: u32, leaves: &'a [LeafBuffer]) -> RoleLeaves<'a> {
        RoleLeaves { binding, bound_at: binding, leaves, per_slot: false, writable: true }
    }

    /// The role bound as a plane of the buffer bound at `binding`.
    pub fn plane_of(self, binding: u32) -> RoleLeaves<'a> {
        RoleLeaves { bound_at: binding, ..self }
    }
}

/// The distinct bindings of a list of roles, in order of first use.
struct Bindings {
    /// Per binding, its first role (which gives its number, slots and access).
    first: Vec<usize>,
    /// Per role, the index of its binding.
    of_role: Vec<usize>,
}

impl Bindings {
    fn of(roles: &[RoleLeaves]) -> Bindings {
        let mut first: Vec<usize> = Vec::new();
        let of_role = roles
            .iter()
            .enumerate()
            .map(|(r, role)| {
                first.iter().position(|&f| roles[f].bound_at == role.bound_at).unwrap_or_else(|| {
                    first.push(r);
                    first.len() - 1
                })
            })
            .collect();
        Bindings { first, of_role }
    }

    /// The buffer and the bytes of elements `elements` of `leaf` in every role bound at `b`, as
    /// one range (its planes' and what lies between them); `None` when they are in different
    /// buffers.
    fn span<'a>(
        &self,
        roles: &'a [RoleLeaves],
        b: usize,
        leaf: usize,
        elements: std::ops::Range<u64>,
    ) -> Option<(&'a wgpu::Buffer, std::ops::Range<u64>)> {
        let mut members = roles.iter().zip(&self.of_role).filter(|(_, &o)| o == b).map(|(r, _)| &r.leaves[leaf]);
        let first = members.next().expect("a binding has a role");
        let mut bytes = byte_at(first, elements.start)..byte_at(first, elements.end);
        for l in members {
            if l.buffer != first.buffer {
                return None;
            }
            bytes = bytes.start.min(byte_at(l, elements.start))..bytes.end.max(byte_at(l, elements.end));
        }
        Some((&first.buffer, bytes))
    }
}

/// Whether every binding that holds several roles as planes ([`RoleLeaves::plane_of`]) can:
/// each leaf's planes in one buffer, close enough that one element of each fits one window
/// (checked with the worst alignment slack), as a pool's and the state's are, save for leaves
/// whose planes together outgrow a binding.
pub(crate) fn planes_fit(device: &wgpu::Device, roles: &[RoleLeaves]) -> bool {
    let limits = device.limits();
    let alignment = limits.min_storage_buffer_offset_alignment as u64;
    let window = limits.max_storage_buffer_binding_size.min(u32::MAX as u64);
    let window = window - window % alignment;
    let bindings = Bindings::of(roles);
    (0..bindings.first.len()).all(|b| {
        (0..roles[0].leaves.len()).all(|leaf| {
            let size = roles[bindings.first[b]].leaves[leaf].dtype.size();
            bindings
                .span(roles, b, leaf, 0..1)
                .is_some_and(|(_, bytes)| bytes.end - bytes.start + size + alignment <= window)
        })
    })
}

/// A part of a leaf that lies inside one dispatch's windows, and the slot it uses.
struct Piece {
    leaf: usize,
    start: u64,
    len: u64,
    slot: u32,
}

/// The range of a buffer one binding covers: `start` aligned, `end` one past the last byte
/// a piece touches.
struct Window {
    buffer: wgpu::Buffer,
    start: u64,
    end: u64,
}

impl Window {
    /// Where the window would start if it also held `bytes` (else `None`: another buffer, or
    /// more than one binding could hold).
    fn extended(&self, buffer: &wgpu::Buffer, bytes: std::ops::Range<u64>, limits: &Limits) -> Option<u64> {
        let start = self.start.min(bytes.start - bytes.start % limits.alignment);
        (*buffer == self.buffer && self.end.max(bytes.end) - start <= limits.window).then_some(start)
    }

    /// The window's end rounded up to a whole vec4 (16 bytes), where the buffer and the
    /// binding size allow: a variant with vec4 loads declares its f32 roles as
    /// `array<vec4<f32>>`, whose length is the binding's size over 16, so only such a window
    /// reaches its last element.
    fn vec4_end(&self, limits: &Limits) -> Option<u64> {
        let end = self.end.next_multiple_of(16);
        (self.start.is_multiple_of(16) && end <= self.buffer.size() && end - self.start <= limits.window).then_some(end)
    }
}

/// Leaves (or parts of leaves) that share one dispatch: per binding, its windows (one per slot
/// in use for a binding of the user's roles, else one).
struct Group {
    windows: Vec<Vec<Window>>,
    pieces: Vec<Piece>,
}

/// One recorded dispatch of the accumulate and apply stages.
pub(crate) struct Dispatch {
    pub bind_group: wgpu::BindGroup,
    pub workgroups: [u32; 2],
}

/// The dispatches of one set of bindings, and the buffers they need.
pub(crate) struct Plan {
    pub dispatches: Vec<Dispatch>,
    pub tile_count: u64,
    /// Holds every dispatch's tile table; kept alive with the bind groups.
    pub _tiles: wgpu::Buffer,
    /// What unused slots bind (read-only roles, writable roles), if any is unused.
    pub _placeholders: Option<[wgpu::Buffer; 2]>,
}

struct Limits {
    window: u64,
    alignment: u64,
    max_per_dimension: u64,
}

fn byte_at(leaf: &LeafBuffer, element: u64) -> u64 {
    leaf.offset + element * leaf.dtype.size()
}

/// The slot element `pos` of `leaf` would use in `group` (a new one when the group has fewer
/// than `max_slots`), or `None` when the group cannot take it. Windows may grow downwards as
/// well as upwards, so leaves taken out of their buffers' order (by the sort on buffer
/// identity) still share the state's windows.
fn place(
    group: &Group,
    roles: &[RoleLeaves],
    bindings: &Bindings,
    leaf: usize,
    pos: u64,
    max_slots: u32,
    limits: &Limits,
) -> Option<u32> {
    let fits = |b: usize, w: &Window| {
        let span = bindings.span(roles, b, leaf, pos..pos + 1);
        span.is_some_and(|(buffer, bytes)| w.extended(buffer, bytes, limits).is_some())
    };
    let per_slot = |b: usize| roles[bindings.first[b]].per_slot;
    let mut slots = 1;
    for (b, windows) in group.windows.iter().enumerate() {
        if per_slot(b) {
            slots = windows.len() as u32;
        } else if !fits(b, &windows[0]) {
            return None;
        }
    }
    let open = (0..slots).find(|&s| {
        group.windows.iter().enumerate().filter(|&(b, _)| per_slot(b)).all(|(b, w)| fits(b, &w[s as usize]))
    });
    match open {
        Some(s) => Some(s),
        None if slots < max_slots => Some(slots),
        None => None,
    }
}

fn group_pieces(roles: &[RoleLeaves], max_slots: u32, limits: &Limits) -> Vec<Group> {
    let leaf_count = roles[0].leaves.len();
    // Sorting by buffers then offset puts leaves that can share windows next to each other.
    let mut order: Vec<usize> = (0..leaf_count).collect();
    order.sort_by(|&a, &b| {
        roles
            .iter()
            .map(|r| r.leaves[a].buffer.cmp(&r.leaves[b].buffer))
            .find(|o| o.is_ne())
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(roles[0].leaves[a].offset.cmp(&roles[0].leaves[b].offset))
    });

    let bindings = Bindings::of(roles);
    let mut groups: Vec<Group> = Vec::new();
    for leaf in order {
        let len = roles[0].leaves[leaf].len;
        let mut pos = 0;
        while pos < len {
            let slot = match groups.last().and_then(|g| place(g, roles, &bindings, leaf, pos, max_slots, limits)) {
                Some(slot) => slot,
                None => {
                    let windows = bindings.first.iter().map(|_| Vec::new()).collect();
                    groups.push(Group { windows, pieces: Vec::new() });
                    0
                }
            };
            let group = groups.last_mut().unwrap();
            let window_of = |b: usize| if roles[bindings.first[b]].per_slot { slot as usize } else { 0 };
            for (b, windows) in group.windows.iter_mut().enumerate() {
                let (buffer, bytes) = bindings.span(roles, b, leaf, pos..pos + 1).expect("planes in one buffer");
                let k = window_of(b);
                if k == windows.len() {
                    let start = bytes.start - bytes.start % limits.alignment;
                    windows.push(Window { buffer: buffer.clone(), start, end: bytes.start });
                }
                let window = &mut windows[k];
                window.start = window.extended(buffer, bytes, limits).expect("placed");
            }
            let mut room = u64::MAX;
            for (r, &b) in roles.iter().zip(&bindings.of_role) {
                let l = &r.leaves[leaf];
                let window = &group.windows[b][window_of(b)];
                room = room.min((window.start + limits.window - byte_at(l, pos)) / l.dtype.size());
            }
            let take = room.min(len - pos);
            // Whole words: 16-bit elements are read and written through the 4-byte word they share.
            for (r, &b) in roles.iter().zip(&bindings.of_role) {
                let window = &mut group.windows[b][window_of(b)];
                window.end = window.end.max(byte_at(&r.leaves[leaf], pos + take).next_multiple_of(4));
            }
            group.pieces.push(Piece { leaf, start: pos, len: take, slot });
            pos += take;
        }
    }
    groups
}

/// The pieces of `group` as segments (offsets relative to the group's windows), neighbours
/// merged: a piece that starts, in every role, where the one before it ends (leaves back to
/// back in every buffer, such as a pool's f32 leaves of a multiple of 64 elements and their
/// averages) continues its segment, so many small leaves cost as one long one. Nothing lies
/// between them, so the sums over all leaves are the same sums.
fn contiguous_runs(roles: &[RoleLeaves], bindings: &Bindings, group: &Group) -> Vec<Segment> {
    let mut runs: Vec<Segment> = Vec::new();
    for piece in &group.pieces {
        let mut segment = Segment { len: piece.len as u32, slot: piece.slot, ..Default::default() };
        for (r, &b) in roles.iter().zip(&bindings.of_role) {
            let l = &r.leaves[piece.leaf];
            let window = &group.windows[b][if r.per_slot { piece.slot as usize } else { 0 }];
            segment.offsets[r.binding as usize - 1] =
                ((byte_at(l, piece.start) - window.start) / l.dtype.size()) as u32;
        }
        match runs.last_mut() {
            Some(run)
                if run.slot == segment.slot
                    && roles.iter().all(|r| {
                        let at = r.binding as usize - 1;
                        run.offsets[at].checked_add(run.len) == Some(segment.offsets[at])
                    })
                    && run.len.checked_add(segment.len).is_some_and(|len| len <= i32::MAX as u32) =>
            {
                run.len += segment.len;
            }
            _ => runs.push(segment),
        }
    }
    runs
}

/// What a tile's segments cost each invocation, in rounds (iterations of the segment loop):
/// a wide segment its elements over the workgroup size; the narrow ones, walked a workgroup's
/// worth at a time, their longest per workgroup's worth (counted for all of them together, an
/// upper bound whatever their order and slots).
#[derive(Clone, Copy, Default)]
struct TileCost {
    wide_rounds: u64,
    narrow_count: u64,
    narrow_longest: u64,
}

impl TileCost {
    fn with(self, len: u64, narrow_max: u64) -> TileCost {
        if len <= narrow_max {
            TileCost { narrow_count: self.narrow_count + 1, narrow_longest: self.narrow_longest.max(len), ..self }
        } else {
            TileCost { wide_rounds: self.wide_rounds + len.div_ceil(WORKGROUP_SIZE), ..self }
        }
    }

    fn rounds(&self) -> u64 {
        self.wide_rounds + self.narrow_count.div_ceil(WORKGROUP_SIZE) * self.narrow_longest
    }
}

/// How a set of bindings is cut into groups of leaves, each one dispatch (or more, where its
/// tile table outgrows a binding), before the kernels are chosen: the slots the groups use
/// decide which variant runs.
pub(crate) struct Grouping {
    groups: Vec<Group>,
    limits: Limits,
    /// Words of one segment record.
    segment_words: usize,
    /// Where a record's length is (its slot follows).
    len_at: usize,
}

impl Grouping {
    /// Whether every window can be bound as whole vec4s ([`Window::vec4_end`]), so the
    /// dispatches may run a variant with vector loads (`Variant::vec4`).
    pub fn vec4_ready(&self) -> bool {
        self.groups.iter().flat_map(|g| g.windows.iter().flatten()).all(|w| w.vec4_end(&self.limits).is_some())
    }

    /// Groups `roles` (all with one entry per leaf, validated by the caller), each group using
    /// at most `max_slots` slots.
    pub fn new(device: &wgpu::Device, roles: &[RoleLeaves], max_slots: u32) -> Result<Grouping> {
        // Each record holds the offsets up to the highest binding, then the length.
        let offsets = roles.iter().map(|r| r.binding as usize).max().unwrap_or(0);
        let len_at = offsets.max(LEN_AT);
        let segment_words = (len_at + 2).max(SEGMENT_WORDS);
        let device_limits = device.limits();
        let alignment = device_limits.min_storage_buffer_offset_alignment as u64;
        // Tile offsets are u32 element indices, so windows stop at 4 GiB whatever the device allows.
        let window = device_limits.max_storage_buffer_binding_size.min(u32::MAX as u64);
        let window = window - window % alignment;
        let min_window = 2 * alignment + 4 * (HEADER_WORDS + 1 + 2 * MAX_SLOTS as usize + segment_words) as u64;
        if window < min_window {
            return Err(Error::ExceedsLimit {
                what: "a window of at least two alignment units".into(),
                needed: min_window,
                limit: window,
                limit_name: "max_storage_buffer_binding_size",
            });
        }
        let limits =
            Limits { window, alignment, max_per_dimension: device_limits.max_compute_workgroups_per_dimension as u64 };
        let groups = group_pieces(roles, max_slots.max(1), &limits);
        Ok(Grouping { groups, limits, segment_words, len_at })
    }

    /// The most slots any group uses.
    pub fn slots_used(&self) -> u32 {
        self.groups.iter().flat_map(|g| g.windows.iter().map(|w| w.len() as u32)).max().unwrap_or(1)
    }
}

/// How a dispatch binds each per-slot role's windows: `slots` of them, the unused ones a
/// placeholder, as that many bindings, or as one binding array of that length
/// (`Variant::array_buffers`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct SlotBinding {
    pub slots: u32,
    pub array: bool,
}

impl SlotBinding {
    /// Slots whose segments a stage walks in loops of their own: each slot with separate
    /// bindings (its loop reads its own), all together with binding arrays (each segment
    /// names its element).
    fn walks(self) -> u32 {
        if self.array {
            1
        } else {
            self.slots
        }
    }

    /// The walk that takes `segment`.
    fn walk_of(self, segment: &Segment) -> u32 {
        if self.array {
            0
        } else {
            segment.slot
        }
    }
}

impl Plan {
    /// Builds the dispatches of `grouping` for `roles` (as grouped), each binding `binding.slots`
    /// slots of every per-slot role (at least [`Grouping::slots_used`]; the unused ones a
    /// placeholder), with tiles of `tile_len` elements (whole rounds of the workgroup) and
    /// partial sums of `partial_bytes` per tile.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        layout: &wgpu::BindGroupLayout,
        roles: &[RoleLeaves],
        grouping: Grouping,
        binding: SlotBinding,
        tile_len: u64,
        partial_bytes: u64,
    ) -> Result<Plan> {
        let (slots, walks) = (binding.slots, binding.walks());
        // Loop iterations a tile of one slot may cost each invocation: every wide segment
        // costs at least one, so such a tile holds at most this many of them, or one full one
        // (and a workgroup's worth of narrow ones costs the longest of them, [`TileCost`]).
        let tile_rounds_per_slot = tile_len / WORKGROUP_SIZE;
        // Segments walked one per invocation (`slot_walk` in `shaders/bindings.wgsl`): a
        // workgroup's worth of them costs at most a tile's rounds.
        let narrow_max = tile_rounds_per_slot;
        let Grouping { groups, limits, segment_words, len_at } = grouping;
        let (window, alignment) = (limits.window, limits.alignment);
        let bindings = Bindings::of(roles);

        // One table of u32 words per dispatch, each at an aligned offset: the header, the first
        // segment of each tile (and one past the last), then the segments.
        let words_per_window = (window / 4) as usize;
        let max_tiles = limits.max_per_dimension * limits.max_per_dimension;
        let mut table: Vec<u32> = Vec::new();
        // Per dispatch: group index, first word and word count of its table, tile count.
        let mut regions: Vec<(usize, usize, usize, u64)> = Vec::new();
        let mut tile_count = 0u64;
        for (g, group) in groups.iter().enumerate() {
            let runs = contiguous_runs(roles, &bindings, group);
            let mut segments = Vec::new();
            for run in &runs {
                for start in (0..run.len).step_by(tile_len as usize) {
                    let mut segment = *run;
                    segment.len = (run.len - start).min(tile_len as u32);
                    for r in roles {
                        segment.offsets[r.binding as usize - 1] += start;
                    }
                    segments.push(segment);
                }
            }
            // Greedy packing, in order, into tiles of bounded cost; then into dispatches whose
            // tables fit one binding window.
            let mut tiles: Vec<std::ops::Range<usize>> = Vec::new();
            // Every slot's segment loop costs a tile at least one round, run or not (a CPU
            // driver runs an empty loop's body once with its lanes masked off), so a tile of
            // many slots holds that many times the work, to keep that cost per element.
            let tile_rounds = tile_rounds_per_slot * walks as u64;
            // A tile's records fit one binding window with its header and bounds, whatever the
            // device's limit (narrow segments can be many: up to a workgroup's worth per round).
            let most_segments = (words_per_window - HEADER_WORDS - 2 * walks as usize - 1) / segment_words;
            let mut cost = TileCost::default();
            for (i, segment) in segments.iter().enumerate() {
                let with = cost.with(segment.len as u64, narrow_max);
                match tiles.last_mut() {
                    Some(tile) if with.rounds() <= tile_rounds && tile.len() < most_segments => {
                        tile.end = i + 1;
                        cost = with;
                    }
                    _ => {
                        tiles.push(i..i + 1);
                        cost = TileCost::default().with(segment.len as u64, narrow_max);
                    }
                }
            }
            // Per walk the wide segments, then the narrow ones by length, so that the
            // invocations that walk narrow ones side by side take about as long each.
            let narrow = |segment: &Segment| segment.len as u64 <= narrow_max;
            let walk = |segment: &Segment| binding.walk_of(segment);
            for tile in &tiles {
                segments[tile.clone()].sort_by_key(|segment| {
                    (walk(segment), narrow(segment), if narrow(segment) { segment.len } else { 0 })
                });
            }
            let mut first_tile = 0;
            while first_tile < tiles.len() {
                let mut last_tile = first_tile;
                let words = |first: usize, last: usize| {
                    let bounds = 2 * (last - first + 1) * walks as usize + 1;
                    HEADER_WORDS + bounds + (tiles[last].end - tiles[first].start) * segment_words
                };
                while last_tile + 1 < tiles.len()
                    && ((last_tile + 1 - first_tile) as u64) < max_tiles
                    && words(first_tile, last_tile + 1) <= words_per_window
                {
                    last_tile += 1;
                }
                let chunk = &tiles[first_tile..=last_tile];
                let count = chunk.len();
                table.resize(table.len().next_multiple_of((alignment / 4).max(1) as usize), 0);
                let base = table.len();
                let first_segment = chunk[0].start;
                let segments_at = HEADER_WORDS + 2 * count * walks as usize + 1;
                table.extend([count as u32, tile_count as u32, segments_at as u32]);
                // Per tile and walk, where the walk's segments start and where its narrow ones
                // start (a tile's are in walk order, the wide ones first).
                for tile in chunk {
                    let in_tile = &segments[tile.clone()];
                    for s in 0..walks {
                        let at = |before: &dyn Fn(&Segment) -> bool| {
                            (tile.start + in_tile.partition_point(before) - first_segment) as u32
                        };
                        table.push(at(&|segment| walk(segment) < s));
                        table.push(at(&|segment| walk(segment) < s || (walk(segment) == s && !narrow(segment))));
                    }
                }
                table.push((chunk[count - 1].end - first_segment) as u32);
                for segment in &segments[first_segment..chunk[count - 1].end] {
                    let start = table.len();
                    table.extend(&segment.offsets[..len_at]);
                    table.extend([segment.len, segment.slot]);
                    table.resize(start + segment_words, 0);
                }
                regions.push((g, base, table.len() - base, count as u64));
                tile_count += count as u64;
                first_tile = last_tile + 1;
            }
        }
        if tile_count * partial_bytes > window {
            return Err(Error::ExceedsLimit {
                what: format!("the partial sums of {tile_count} tiles"),
                needed: tile_count * partial_bytes,
                limit: window,
                limit_name: "max_storage_buffer_binding_size",
            });
        }

        gpu_scope(device, "building the step's bind groups", || {
            let tiles = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("bloop tiles"),
                size: (table.len() * 4) as u64,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            queue.write_buffer(&tiles, 0, bytemuck::cast_slice(&table));
            // A read-only and a writable one: wgpu refuses a dispatch that binds one buffer
            // both ways.
            let unused = groups.iter().any(|g| {
                bindings.first.iter().zip(&g.windows).any(|(&r, w)| roles[r].per_slot && (w.len() as u32) < slots)
            });
            let placeholders = unused.then(|| {
                [false, true].map(|_| {
                    device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("bloop unused slot"),
                        size: PLACEHOLDER_BYTES,
                        usage: wgpu::BufferUsages::STORAGE,
                        mapped_at_creation: false,
                    })
                })
            });
            let dispatches = regions
                .iter()
                .map(|&(g, first_word, words, count)| {
                    let group = &groups[g];
                    // Per binding of the roles, the windows it binds (a copy per slot, or the
                    // elements of its array), kept for the entries that borrow them.
                    let windows: Vec<(u32, Vec<wgpu::BufferBinding>)> = bindings
                        .first
                        .iter()
                        .zip(&group.windows)
                        .map(|(&first, windows)| {
                            let r = &roles[first];
                            let copies = if r.per_slot { slots } else { 1 };
                            let bound = (0..copies as usize).map(|s| match windows.get(s) {
                                // Whole vec4s where possible, for the vec4 variants; a wider
                                // range of the same buffer binds the same way.
                                Some(w) => wgpu::BufferBinding {
                                    buffer: &w.buffer,
                                    offset: w.start,
                                    size: NonZeroU64::new(w.vec4_end(&limits).unwrap_or(w.end) - w.start),
                                },
                                None => wgpu::BufferBinding {
                                    buffer: &placeholders.as_ref().expect("made for unused slots")[r.writable as usize],
                                    offset: 0,
                                    size: NonZeroU64::new(PLACEHOLDER_BYTES),
                                },
                            });
                            (r.bound_at, bound.collect())
                        })
                        .collect();
                    let mut entries = vec![wgpu::BindGroupEntry {
                        binding: slot::TILES,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: &tiles,
                            offset: first_word as u64 * 4,
                            size: NonZeroU64::new(words as u64 * 4),
                        }),
                    }];
                    for ((at, bound), &first) in windows.iter().zip(&bindings.first) {
                        if binding.array && roles[first].per_slot {
                            let resource = wgpu::BindingResource::BufferArray(bound);
                            entries.push(wgpu::BindGroupEntry { binding: *at, resource });
                            continue;
                        }
                        entries.extend(bound.iter().enumerate().map(|(s, window)| wgpu::BindGroupEntry {
                            binding: slot_binding(*at, s as u32),
                            resource: wgpu::BindingResource::Buffer(window.clone()),
                        }));
                    }
                    let x = count.min(limits.max_per_dimension);
                    Dispatch {
                        bind_group: device.create_bind_group(&wgpu::BindGroupDescriptor {
                            label: Some("bloop leaves"),
                            layout,
                            entries: &entries,
                        }),
                        workgroups: [x as u32, count.div_ceil(x) as u32],
                    }
                })
                .collect();
            Plan { dispatches, tile_count, _tiles: tiles, _placeholders: placeholders }
        })
    }
}
