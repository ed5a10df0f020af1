//! How a step's elements are cut into dispatches and tiles.
//!
//! Leaves may live in any mix of buffers. Leaves whose roles share buffers go into one
//! dispatch; each dispatch binds, per role, one window of at most
//! `max_storage_buffer_binding_size` bytes that starts at an aligned offset, so a pool or leaf
//! larger than the binding limit is split over several dispatches without the caller noticing.
//! Within a dispatch, each workgroup walks one tile: one or more segments (runs of elements of
//! one leaf, described by element offsets relative to the windows) of at most [`TILE_LEN`]
//! elements together. Small leaves share tiles, so a model with many tiny leaves (biases,
//! norms) does not pay a workgroup and a reduction for each.

use std::num::NonZeroU64;

use crate::context::gpu_scope;
use crate::error::{Error, Result};
use crate::kernels::slot;
use crate::layout::LeafBuffer;

/// Elements per tile: 16 per invocation of a 256-invocation workgroup, enough to amortise the
/// workgroup reduction while keeping thousands of workgroups in flight on large steps.
pub const TILE_LEN: u64 = 4096;

/// Invocations per workgroup (`WORKGROUP_SIZE` in `shaders/bindings.wgsl`).
const WORKGROUP_SIZE: u64 = 256;

/// Loop iterations a tile may cost each invocation: every segment costs at least one, so a
/// tile holds at most this many small segments, or one full-length one.
const TILE_ROUNDS: u64 = TILE_LEN / WORKGROUP_SIZE;

/// Words of one segment record (`Segment` in `shaders/bindings.wgsl`): the offsets by
/// binding - 1 (main, aux, main_ema, aux_ema, out, weights, opt_m, opt_v), the length at
/// [`LEN_AT`], padded to 12. A hierarchy's records are longer: the same shape with more
/// offsets (`hierarchy_slots::segment_words`).
const SEGMENT_WORDS: usize = 12;

/// Where a segment record's length is, at the least (`shaders::SEGMENT_LEN_AT`).
const LEN_AT: usize = crate::shaders::SEGMENT_LEN_AT as usize;

/// Most offsets a segment record holds (a hierarchy's 2k + 1 roles with k = `MAX_LEVELS`).
const MAX_SLOTS: usize = 2 * crate::config::MAX_LEVELS + 2;

/// Words before the tile starts in a dispatch's table: tile count, first partial, first
/// segment word.
const HEADER_WORDS: usize = 3;

/// Size of one tile's partial sums (`Partial` in `shaders/bindings.wgsl`: two vec4 of f32).
pub(crate) const PARTIAL_BYTES: u64 = 32;

/// Element offsets of one segment, indexed by binding slot - 1 (main, aux, main_ema, aux_ema,
/// out, params, opt_m, opt_v), and its length.
#[derive(Clone, Copy, Debug, Default)]
struct Segment {
    offsets: [u32; MAX_SLOTS],
    len: u32,
}

/// The per-leaf buffers of one role, with the binding slot they go to.
pub(crate) struct RoleLeaves<'a> {
    pub slot: u32,
    pub leaves: &'a [LeafBuffer],
}

/// A part of a leaf that lies inside one dispatch's windows.
struct Piece {
    leaf: usize,
    start: u64,
    len: u64,
}

/// Leaves (or parts of leaves) that share bound windows.
struct Group {
    /// Per role: the buffer and the window's first byte.
    windows: Vec<(wgpu::Buffer, u64)>,
    /// Per role: one past the last byte any piece touches.
    ends: Vec<u64>,
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
}

struct Limits {
    window: u64,
    alignment: u64,
    max_per_dimension: u64,
}

fn byte_at(leaf: &LeafBuffer, element: u64) -> u64 {
    leaf.offset + element * leaf.dtype.size()
}

fn group_pieces(roles: &[RoleLeaves], limits: &Limits) -> Vec<Group> {
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
            let fits = groups.last().is_some_and(|g| {
                roles.iter().zip(&g.windows).all(|(r, (buffer, start))| {
                    let l = &r.leaves[leaf];
                    let at = byte_at(l, pos);
                    l.buffer == *buffer && at >= *start && at + l.dtype.size() <= start + limits.window
                })
            });
            if !fits {
                let windows: Vec<(wgpu::Buffer, u64)> = roles
                    .iter()
                    .map(|r| {
                        let l = &r.leaves[leaf];
                        let at = byte_at(l, pos);
                        (l.buffer.clone(), at - at % limits.alignment)
                    })
                    .collect();
                let ends = windows.iter().map(|w| w.1).collect();
                groups.push(Group { windows, ends, pieces: Vec::new() });
            }
            let group = groups.last_mut().unwrap();
            let room = roles
                .iter()
                .zip(&group.windows)
                .map(|(r, (_, start))| {
                    let l = &r.leaves[leaf];
                    (start + limits.window - byte_at(l, pos)) / l.dtype.size()
                })
                .min()
                .unwrap();
            let take = room.min(len - pos);
            // Whole words: 16-bit elements are read and written through the 4-byte word they share.
            for (r, end) in roles.iter().zip(&mut group.ends) {
                *end = (*end).max(byte_at(&r.leaves[leaf], pos + take).next_multiple_of(4));
            }
            group.pieces.push(Piece { leaf, start: pos, len: take });
            pos += take;
        }
    }
    groups
}

impl Plan {
    /// Builds the dispatches for `roles` (all with one entry per leaf, validated by the caller),
    /// with partial sums of `partial_bytes` per tile.
    pub fn new(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        layout: &wgpu::BindGroupLayout,
        roles: &[RoleLeaves],
        partial_bytes: u64,
    ) -> Result<Plan> {
        // Each record holds the offsets up to the highest binding, then the length.
        let slots = roles.iter().map(|r| r.slot as usize).max().unwrap_or(0);
        let len_at = slots.max(LEN_AT);
        let segment_words = (len_at + 1).max(SEGMENT_WORDS);
        let device_limits = device.limits();
        let alignment = device_limits.min_storage_buffer_offset_alignment as u64;
        // Tile offsets are u32 element indices, so windows stop at 4 GiB whatever the device allows.
        let window = device_limits.max_storage_buffer_binding_size.min(u32::MAX as u64);
        let window = window - window % alignment;
        let min_window = 2 * alignment + 4 * (HEADER_WORDS + 2 + segment_words) as u64;
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
        let groups = group_pieces(roles, &limits);

        // One table of u32 words per dispatch, each at an aligned offset: the header, the first
        // segment of each tile (and one past the last), then the segments.
        let words_per_window = (window / 4) as usize;
        let max_tiles = limits.max_per_dimension * limits.max_per_dimension;
        let mut table: Vec<u32> = Vec::new();
        // Per dispatch: group index, first word and word count of its table, tile count.
        let mut regions: Vec<(usize, usize, usize, u64)> = Vec::new();
        let mut tile_count = 0u64;
        for (g, group) in groups.iter().enumerate() {
            let mut segments = Vec::new();
            for piece in &group.pieces {
                let mut start = piece.start;
                while start < piece.start + piece.len {
                    let len = TILE_LEN.min(piece.start + piece.len - start);
                    let mut segment = Segment { len: len as u32, ..Default::default() };
                    for (r, (_, window_start)) in roles.iter().zip(&group.windows) {
                        let l = &r.leaves[piece.leaf];
                        segment.offsets[r.slot as usize - 1] =
                            ((byte_at(l, start) - window_start) / l.dtype.size()) as u32;
                    }
                    segments.push(segment);
                    start += len;
                }
            }
            // Greedy packing, in order, into tiles of bounded cost; then into dispatches whose
            // tables fit one binding window.
            let mut tiles: Vec<std::ops::Range<usize>> = Vec::new();
            let mut rounds = TILE_ROUNDS;
            for (i, segment) in segments.iter().enumerate() {
                let cost = (segment.len as u64).div_ceil(WORKGROUP_SIZE);
                match tiles.last_mut() {
                    Some(tile) if rounds + cost <= TILE_ROUNDS => {
                        tile.end = i + 1;
                        rounds += cost;
                    }
                    _ => {
                        tiles.push(i..i + 1);
                        rounds = cost;
                    }
                }
            }
            let mut first_tile = 0;
            while first_tile < tiles.len() {
                let mut last_tile = first_tile;
                let words = |first: usize, last: usize| {
                    HEADER_WORDS + (last - first + 2) + (tiles[last].end - tiles[first].start) * segment_words
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
                let segments_at = HEADER_WORDS + count + 1;
                table.extend([count as u32, tile_count as u32, segments_at as u32]);
                table.extend(chunk.iter().map(|t| (t.start - first_segment) as u32));
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
                    for ((r, (buffer, start)), end) in roles.iter().zip(&group.windows).zip(&group.ends) {
                        entries.push(wgpu::BindGroupEntry {
                            binding: r.slot,
                            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                buffer,
                                offset: *start,
                                size: NonZeroU64::new(end - start),
                            }),
                        });
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
            Plan { dispatches, tile_count, _tiles: tiles }
        })
    }
}
