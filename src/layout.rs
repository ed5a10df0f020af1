//! A model's parameter leaves, and where each leaf's data lives in GPU buffers.

use crate::dtype::DType;
use crate::error::{Error, Result};
pub use crate::role::Role;

/// Byte alignment of every leaf the library places itself (pools, EMA state). 256 is the
/// largest `min_storage_buffer_offset_alignment` WebGPU allows, so a user's kernel can bind
/// any pool view on any adapter.
pub const PLACEMENT_ALIGNMENT: u64 = 256;

/// Most elements one leaf may have: offsets inside one bound window are u32 element indices.
pub const MAX_LEAF_LEN: u64 = u32::MAX as u64 / 2;

/// One named parameter leaf.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// The leaf's name (a parameter path such as `encoder.0.weight`); unique and not empty.
    pub name: String,
    /// Number of elements.
    pub len: u64,
    /// Optional tensor shape; when given, its product must equal `len`.
    pub shape: Option<Vec<u64>>,
}

/// The ordered leaves of a model. Every per-leaf list in the API follows this order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    leaves: Vec<Leaf>,
}

impl Layout {
    /// Leaves from `(name, length)` pairs.
    pub fn new<S: Into<String>>(leaves: impl IntoIterator<Item = (S, u64)>) -> Result<Layout> {
        Layout::from_leaves(leaves.into_iter().map(|(name, len)| Leaf { name: name.into(), len, shape: None }))
    }

    /// Leaves from `(name, shape)` pairs; each length is the shape's product (a product past
    /// `u64` is refused as too many elements, in debug and release builds alike).
    pub fn from_shapes<S: Into<String>>(leaves: impl IntoIterator<Item = (S, Vec<u64>)>) -> Result<Layout> {
        let leaves = leaves
            .into_iter()
            .map(|(name, shape)| {
                let name = name.into();
                match shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)) {
                    Some(len) => Ok(Leaf { name, len, shape: Some(shape) }),
                    None => Err(Error::InvalidLayout(format!(
                        "leaf `{name}`: shape {shape:?} has more than 2^64 elements; at most {} are supported",
                        MAX_LEAF_LEN
                    ))),
                }
            })
            .collect::<Result<Vec<Leaf>>>()?;
        Layout::from_leaves(leaves)
    }

    /// Unnamed leaves (`leaf0`, `leaf1`, ...) of the given lengths.
    pub fn from_lengths(lengths: &[u64]) -> Result<Layout> {
        Layout::new(lengths.iter().enumerate().map(|(i, &len)| (format!("leaf{i}"), len)))
    }

    /// Leaves as given; refuses an empty list, empty or duplicate names, empty leaves, shapes that do not match the length, and leaves over 2^31 - 1 elements.
    pub fn from_leaves(leaves: impl IntoIterator<Item = Leaf>) -> Result<Layout> {
        let leaves: Vec<Leaf> = leaves.into_iter().collect();
        if leaves.is_empty() {
            return Err(Error::InvalidLayout("a layout needs at least one leaf".into()));
        }
        let mut names = std::collections::HashSet::new();
        for (index, leaf) in leaves.iter().enumerate() {
            // Errors, checkpoints and diagnostics name leaves; an empty name names nothing.
            if leaf.name.is_empty() {
                return Err(Error::InvalidLayout(format!("leaf {index} has an empty name")));
            }
            if !names.insert(leaf.name.as_str()) {
                return Err(Error::InvalidLayout(format!("duplicate leaf name `{}`", leaf.name)));
            }
            if leaf.len == 0 {
                return Err(Error::InvalidLayout(format!("leaf `{}` has no elements", leaf.name)));
            }
            if let Some(shape) = &leaf.shape {
                let product = shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
                if product != Some(leaf.len) {
                    return Err(Error::InvalidLayout(format!(
                        "leaf `{}`: shape {shape:?} does not hold {} elements",
                        leaf.name, leaf.len
                    )));
                }
            }
            if leaf.len > MAX_LEAF_LEN {
                return Err(Error::InvalidLayout(format!(
                    "leaf `{}` has {} elements; at most {MAX_LEAF_LEN} are supported",
                    leaf.name, leaf.len,
                )));
            }
        }
        Ok(Layout { leaves })
    }

    /// The leaves in order.
    pub fn leaves(&self) -> &[Leaf] {
        &self.leaves
    }

    /// Number of leaves.
    pub fn len(&self) -> usize {
        self.leaves.len()
    }

    /// Whether there are no leaves (never true for a layout that was built).
    pub fn is_empty(&self) -> bool {
        self.leaves.is_empty()
    }

    /// Total number of elements over all leaves.
    pub fn total_elements(&self) -> u64 {
        self.leaves.iter().map(|l| l.len).sum()
    }

    /// Element count of every leaf, in order.
    pub fn lengths(&self) -> Vec<u64> {
        self.leaves.iter().map(|l| l.len).collect()
    }

    /// Index of the leaf with this name.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.leaves.iter().position(|l| l.name == name)
    }
}

/// One leaf's data: `len` elements of type `dtype` starting `offset` bytes into `buffer`.
#[derive(Clone, Debug)]
pub struct LeafBuffer {
    /// The buffer holding the leaf.
    pub buffer: wgpu::Buffer,
    /// Byte offset of the leaf's first element.
    pub offset: u64,
    /// Number of elements.
    pub len: u64,
    /// Element type.
    pub dtype: DType,
}

impl LeafBuffer {
    /// `len` f32 elements at byte `offset`.
    pub fn new(buffer: &wgpu::Buffer, offset: u64, len: u64) -> LeafBuffer {
        LeafBuffer::typed(buffer, offset, len, DType::F32)
    }

    /// `len` elements of `dtype` at byte `offset`.
    pub fn typed(buffer: &wgpu::Buffer, offset: u64, len: u64, dtype: DType) -> LeafBuffer {
        LeafBuffer { buffer: buffer.clone(), offset, len, dtype }
    }

    /// The byte range this leaf occupies (its end saturates at `u64::MAX` for a range no
    /// buffer can hold; the library refuses such leaves before using them).
    pub fn byte_range(&self) -> std::ops::Range<u64> {
        self.offset..self.offset.saturating_add(self.len.saturating_mul(self.dtype.size()))
    }

    /// The 4-byte words the leaf touches (16-bit leaves share words with their neighbours;
    /// the GPU reads and copies whole words).
    pub(crate) fn word_range(&self) -> std::ops::Range<u64> {
        let bytes = self.byte_range();
        bytes.start - bytes.start % 4..bytes.end.checked_next_multiple_of(4).unwrap_or(u64::MAX)
    }
}

/// Where each leaf goes when the library packs a layout into buffers of its own: leaves in
/// order, each at an aligned offset, starting a new buffer when the next leaf would not fit.
#[derive(Clone, Debug)]
pub(crate) struct Packing {
    pub buffer_sizes: Vec<u64>,
    /// Per leaf and plane: (buffer index, byte offset).
    pub places: Vec<(usize, u64)>,
    pub dtype: DType,
}

impl Packing {
    pub fn new(layout: &Layout, dtype: DType, max_buffer_size: u64, what: &str) -> Result<Packing> {
        Packing::planes(layout, dtype, 1, max_buffer_size, u64::MAX, what)
    }

    /// Room for `planes` copies of every leaf (the levels of one role: a hierarchy's
    /// gradients or averages, the optimizer's moments), so that the kernels can bind a role's
    /// planes as one buffer. Leaves go in chunks whose planes together fit `window` bytes (the
    /// device's largest binding), plane after plane within a chunk: every leaf's planes lie in
    /// one binding window, and neighbouring leaves stay back to back in every plane, so the
    /// step runs them as one segment (`plan::contiguous_runs`). A leaf whose planes fit no
    /// buffer gets them one at a time. `places` lists each leaf's planes in order, leaf after
    /// leaf ([`Packing::allocate_planes`]).
    pub fn planes(
        layout: &Layout,
        dtype: DType,
        planes: usize,
        max_buffer_size: u64,
        window: u64,
        what: &str,
    ) -> Result<Packing> {
        let leaves = layout.leaves();
        let mut buffer_sizes = vec![0u64];
        let mut places = vec![(0usize, 0u64); leaves.len() * planes];
        let planes_u64 = planes as u64;
        // Bytes of `planes` planes of `plane` bytes each, every plane aligned.
        let block = |plane: u64| (planes_u64 - 1) * plane.next_multiple_of(PLACEMENT_ALIGNMENT) + plane;
        let chunk_limit = window.min(max_buffer_size);
        let mut first = 0;
        while first < leaves.len() {
            // The chunk first..end and each leaf's offset within a plane of it.
            let (mut end, mut plane, mut within) = (first, 0u64, Vec::new());
            while end < leaves.len() {
                let bytes = leaves[end].len * dtype.size();
                if bytes > max_buffer_size {
                    return Err(Error::ExceedsLimit {
                        what: format!("{what} of leaf `{}`", leaves[end].name),
                        needed: bytes,
                        limit: max_buffer_size,
                        limit_name: "max_buffer_size",
                    });
                }
                let at = plane.next_multiple_of(PLACEMENT_ALIGNMENT);
                if end > first && block(at + bytes) > chunk_limit {
                    break;
                }
                within.push(at);
                plane = at + bytes;
                end += 1;
            }
            let stride = plane.next_multiple_of(PLACEMENT_ALIGNMENT);
            let used = buffer_sizes.last().unwrap().next_multiple_of(PLACEMENT_ALIGNMENT);
            if block(plane) <= max_buffer_size {
                let base = if used + block(plane) <= max_buffer_size {
                    used
                } else {
                    buffer_sizes.push(0);
                    0
                };
                for (k, &at) in within.iter().enumerate() {
                    for p in 0..planes {
                        places[(first + k) * planes + p] = (buffer_sizes.len() - 1, base + p as u64 * stride + at);
                    }
                }
                *buffer_sizes.last_mut().unwrap() = base + block(plane);
            } else {
                // One leaf too large for all its planes in one buffer: a plane at a time.
                for p in 0..planes {
                    let mut offset = buffer_sizes.last().unwrap().next_multiple_of(PLACEMENT_ALIGNMENT);
                    if offset + plane > max_buffer_size {
                        buffer_sizes.push(0);
                        offset = 0;
                    }
                    *buffer_sizes.last_mut().unwrap() = offset + plane;
                    places[first * planes + p] = (buffer_sizes.len() - 1, offset);
                }
            }
            first = end;
        }
        // Round up so copies of whole buffers stay 4-byte multiples, and to whole vec4s where
        // the device allows, so that the last leaf can be bound as `array<vec4<f32>>` too (the
        // kernels' vector loads, `plan::Grouping::vec4_ready`).
        for size in &mut buffer_sizes {
            let padded = size.next_multiple_of(16);
            *size = if padded <= max_buffer_size { padded } else { size.next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT) };
        }
        Ok(Packing { buffer_sizes, places, dtype })
    }

    /// Allocates the buffers and returns one [`LeafBuffer`] per leaf (a packing of one plane).
    pub fn allocate(
        &self,
        device: &wgpu::Device,
        layout: &Layout,
        usage: wgpu::BufferUsages,
        label: &str,
    ) -> Result<(Vec<wgpu::Buffer>, Vec<LeafBuffer>)> {
        let (buffers, mut planes) = self.allocate_planes(device, layout, usage, label)?;
        Ok((buffers, planes.remove(0)))
    }

    /// Allocates the buffers and returns each plane's [`LeafBuffer`]s, one per leaf.
    pub fn allocate_planes(
        &self,
        device: &wgpu::Device,
        layout: &Layout,
        usage: wgpu::BufferUsages,
        label: &str,
    ) -> Result<(Vec<wgpu::Buffer>, Vec<Vec<LeafBuffer>>)> {
        let buffers: Vec<wgpu::Buffer> = crate::context::gpu_scope(device, "allocating buffers", || {
            self.buffer_sizes
                .iter()
                .enumerate()
                .map(|(i, &size)| {
                    device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some(&format!("{label} {i}")),
                        size,
                        usage,
                        mapped_at_creation: false,
                    })
                })
                .collect()
        })?;
        let planes = self.places.len() / layout.len();
        let leaves = (0..planes)
            .map(|p| {
                let places = self.places.iter().skip(p).step_by(planes);
                let leaf =
                    |(leaf, &(b, offset)): (&Leaf, _)| LeafBuffer::typed(&buffers[b], offset, leaf.len, self.dtype);
                layout.leaves().iter().zip(places).map(leaf).collect()
            })
            .collect();
        Ok((buffers, leaves))
    }
}
