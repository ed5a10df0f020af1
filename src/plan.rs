//! How a step's elements are cut into dispatches and tiles.
//!
//! Leaves may live in any mix of buffers. A dispatch binds, per role, windows of at most
//! `max_storage_buffer_binding_size` bytes that start at aligned offsets: one for each role the
//! state owns (averages, optimizer state), and one per slot for each role the user owns
//! (gradients, output, parameters), so leaves in up to that many distinct buffers share a
//! dispatch, and each segment names its slot. A pool or leaf larger than the binding limit is
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
pub(crate) struct RoleLeaves<'a> {
    pub binding: u32,
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
        RoleLeaves { binding, leaves, per_slot: true, writable }
    }

    /// A role in the state's own buffers (written by the step), bound once.
    pub fn state(binding: u32, leaves: &'a [LeafBuffer]) -> RoleLeaves<'a> {
        RoleLeaves { binding, leaves, per_slot: false, writable: true }
    }
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

/// Leaves (or parts of leaves) that share one dispatch: per role, its windows (one per slot
/// in use for a per-slot role, else one).
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
fn place(group: &Group, roles: &[RoleLeaves], leaf: usize, pos: u64, max_slots: u32, limits: &Limits) -> Option<u32> {
    let fits = |r: &RoleLeaves, w: &Window| {
        let l = &r.leaves[leaf];
        let at = byte_at(l, pos);
        w.extended(&l.buffer, at..at + l.dtype.size(), limits).is_some()
    };
    let mut slots = 1;
    for (r, windows) in roles.iter().zip(&group.windows) {
        if r.per_slot {
            slots = windows.len() as u32;
        } else if !fits(r, &windows[0]) {
            return None;
        }
    }
    let open = (0..slots)
        .find(|&s| roles.iter().zip(&group.windows).filter(|(r, _)| r.per_slot).all(|(r, w)| fits(r, &w[s as usize])));
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

    let mut groups: Vec<Group> = Vec::new();
    for leaf in order {
        let len = roles[0].leaves[leaf].len;
        let mut pos = 0;
        while pos < len {
            let slot = match groups.last().and_then(|g| place(g, roles, leaf, pos, max_slots, limits)) {
                Some(slot) => slot,
                None => {
                    groups.push(Group { windows: roles.iter().map(|_| Vec::new()).collect(), pieces: Vec::new() });
                    0
                }
            };
            let group = groups.last_mut().unwrap();
            let mut room = u64::MAX;
            for (r, windows) in roles.iter().zip(&mut group.windows) {
                let l = &r.leaves[leaf];
                let at = byte_at(l, pos);
                let k = if r.per_slot { slot as usize } else { 0 };
                if k == windows.len() {
                    windows.push(Window { buffer: l.buffer.clone(), start: at - at % limits.alignment, end: at });
                }
                let window = &mut windows[k];
                window.start = window.extended(&l.buffer, at..at + l.dtype.size(), limits).expect("placed");
                room = room.min((window.start + limits.window - at) / l.dtype.size());
            }
            let take = room.min(len - pos);
            // Whole words: 16-bit elements are read and written through the 4-byte word they share.
            for (r, windows) in roles.iter().zip(&mut group.windows) {
                let window = &mut windows[if r.per_slot { slot as usize } else { 0 }];
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
fn contiguous_runs(roles: &[RoleLeaves], group: &Group) -> Vec<Segment> {
    let mut runs: Vec<Segment> = Vec::new();
    for piece in &group.pieces {
        let mut segment = Segment { len: piece.len as u32, slot: piece.slot, ..Default::default() };
        for (r, windows) in roles.iter().zip(&group.windows) {
            let l = &r.leaves[piece.leaf];
            let window = &windows[if r.per_slot { piece.slot as usize } else { 0 }];
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
        let segment_words = (len_at + 1).max(SEGMENT_WORDS);
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

impl Plan {
    /// Builds the dispatches of `grouping` for `roles` (as grouped), each binding `slots`
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
        slots: u32,
        tile_len: u64,
        partial_bytes: u64,
    ) -> Result<Plan> {
        // Loop iterations a tile of one slot may cost each invocation: every wide segment
        // costs at least one, so such a tile holds at most this many of them, or one full one
        // (and a workgroup's worth of narrow ones costs the longest of them, [`TileCost`]).
        let tile_rounds_per_slot = tile_len / WORKGROUP_SIZE;
        // Segments walked one per invocation (`slot_walk` in `shaders/bindings.wgsl`): a
        // workgroup's worth of them costs at most a tile's rounds.
        let narrow_max = tile_rounds_per_slot;
        let Grouping { groups, limits, segment_words, len_at } = grouping;
        let (window, alignment) = (limits.window, limits.alignment);

        // One table of u32 words per dispatch, each at an aligned offset: the header, the first
        // segment of each tile (and one past the last), then the segments.
        let words_per_window = (window / 4) as usize;
        let max_tiles = limits.max_per_dimension * limits.max_per_dimension;
        let mut table: Vec<u32> = Vec::new();
        // Per dispatch: group index, first word and word count of its table, tile count.
        let mut regions: Vec<(usize, usize, usize, u64)> = Vec::new();
        let mut tile_count = 0u64;
        for (g, group) in groups.iter().enumerate() {
            let runs = contiguous_runs(roles, group);
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
            let tile_rounds = tile_rounds_per_slot * slots as u64;
            // A tile's records fit one binding window with its header and bounds, whatever the
            // device's limit (narrow segments can be many: up to a workgroup's worth per round).
            let most_segments = (words_per_window - HEADER_WORDS - 2 * slots as usize - 1) / segment_words;
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
            // Per slot the wide segments, then the narrow ones by length, so that the
            // invocations that walk narrow ones side by side take about as long each.
            let narrow = |segment: &Segment| segment.len as u64 <= narrow_max;
            for tile in &tiles {
                segments[tile.clone()].sort_by_key(|segment| {
                    (segment.slot, narrow(segment), if narrow(segment) { segment.len } else { 0 })
                });
            }
            let mut first_tile = 0;
            while first_tile < tiles.len() {
                let mut last_tile = first_tile;
                let words = |first: usize, last: usize| {
                    let bounds = 2 * (last - first + 1) * slots as usize + 1;
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
                let segments_at = HEADER_WORDS + 2 * count * slots as usize + 1;
                table.extend([count as u32, tile_count as u32, segments_at as u32]);
                // Per tile and slot, where the slot's segments start and where its narrow ones
                // start (a tile's are in slot order, the wide ones first).
                for tile in chunk {
                    let in_tile = &segments[tile.clone()];
                    for s in 0..slots {
                        let at = |before: &dyn Fn(&Segment) -> bool| {
                            (tile.start + in_tile.partition_point(before) - first_segment) as u32
                        };
                        table.push(at(&|segment| segment.slot < s));
                        table.push(at(&|segment| segment.slot < s || (segment.slot == s && !narrow(segment))));
                    }
                }
                table.push((chunk[count - 1].end - first_segment) as u32);
                for segment in &segments[first_segment..chunk[count - 1].end] {
                    let start = table.len();
                    table.extend(&segment.offsets[..len_at]);
                    table.push(segment.len);
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
            let unused = groups
                .iter()
                .any(|g| roles.iter().zip(&g.windows).any(|(r, w)| r.per_slot && (w.len() as u32) < slots));
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
                    let mut entries = vec![wgpu::BindGroupEntry {
                        binding: slot::TILES,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: &tiles,
                            offset: first_word as u64 * 4,
                            size: NonZeroU64::new(words as u64 * 4),
                        }),
                    }];
                    for (r, windows) in roles.iter().zip(&group.windows) {
                        let copies = if r.per_slot { slots } else { 1 };
                        for s in 0..copies {
                            let (buffer, offset, size) = match windows.get(s as usize) {
                                // Whole vec4s where possible, for the vec4 variants; a
                                // wider range of the same buffer binds the same way.
                                Some(w) => (&w.buffer, w.start, w.vec4_end(&limits).unwrap_or(w.end) - w.start),
                                None => {
                                    let placeholders = placeholders.as_ref().expect("made for unused slots");
                                    (&placeholders[r.writable as usize], 0, PLACEHOLDER_BYTES)
                                }
                            };
                            entries.push(wgpu::BindGroupEntry {
                                binding: slot_binding(r.binding, s),
                                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                    buffer,
                                    offset,
                                    size: NonZeroU64::new(size),
                                }),
                            });
                        }
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
