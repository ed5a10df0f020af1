//! Gradient buffers the library allocates: the gradients of every loss in one set of buffers,
//! each leaf's next to each other (planes the step binds as one buffer), the output and the
//! parameters in buffers of their own; each leaf at an aligned offset, handed out as per-leaf
//! views that the user's kernels write into.

use crate::dtype::{DType, ElementTypes};
use crate::error::{Error, Result};
use crate::layout::{Layout, LeafBuffer, Packing};

/// Usage of every pool buffer: kernels write gradients in, copies move data in and out.
pub const POOL_USAGE: wgpu::BufferUsages =
    wgpu::BufferUsages::STORAGE.union(wgpu::BufferUsages::COPY_SRC).union(wgpu::BufferUsages::COPY_DST);

/// Main and aux gradient buffers (and an output buffer unless the step works in place).
#[derive(Debug)]
pub struct GradientPool {
    layout: Layout,
    main: Vec<LeafBuffer>,
    aux: Vec<LeafBuffer>,
    output: Option<Vec<LeafBuffer>>,
    params: Option<Vec<LeafBuffer>>,
    buffers: Vec<wgpu::Buffer>,
    /// A hierarchy's gradients of losses 2..k (main and aux are losses 0 and 1).
    more: Vec<Vec<LeafBuffer>>,
}

impl GradientPool {
    /// Allocates the pool. With `in_place`, the direction overwrites the main gradient and
    /// no output buffer is allocated. A role larger than `max_buffer_size` is spread over
    /// several buffers, never splitting a leaf.
    pub fn new(device: &wgpu::Device, layout: &Layout, in_place: bool) -> Result<GradientPool> {
        GradientPool::typed(device, layout, in_place, ElementTypes::default())
    }

    /// A pool whose gradients and output have the element types of `types` (the averages'
    /// type does not matter here). In place needs the output's type to be the gradients'.
    pub fn typed(device: &wgpu::Device, layout: &Layout, in_place: bool, types: ElementTypes) -> Result<GradientPool> {
        GradientPool::hierarchy(device, layout, 1, in_place, types)
    }

    /// A pool for a hierarchy of `levels` auxiliary losses: `levels + 1` gradients per leaf
    /// ([`GradientPool::gradient`]); with 1 it is [`GradientPool::typed`].
    pub fn hierarchy(
        device: &wgpu::Device,
        layout: &Layout,
        levels: usize,
        in_place: bool,
        types: ElementTypes,
    ) -> Result<GradientPool> {
        if in_place {
            types.check_in_place()?;
        }
        let (max, window) = (device.limits().max_buffer_size, device.limits().max_storage_buffer_binding_size);
        // Every leaf's gradients next to each other, so that a step binds them as planes of
        // one buffer whatever the number of levels (`shaders::Variant::gradient_planes`).
        let packing = Packing::planes(layout, types.gradients, levels.max(1) + 1, max, window, "pool")?;
        let (mut buffers, gradients) = packing.allocate_planes(device, layout, POOL_USAGE, "bloop pool gradients")?;
        let mut gradients = gradients.into_iter();
        let (main, aux) = (gradients.next().expect("main"), gradients.next().expect("aux"));
        let more = gradients.collect();
        let output = if in_place {
            None
        } else {
            let packing = Packing::new(layout, types.output, max, "pool")?;
            let (b, leaves) = packing.allocate(device, layout, POOL_USAGE, "bloop pool output")?;
            buffers.extend(b);
            Some(leaves)
        };
        Ok(GradientPool { layout: layout.clone(), main, aux, output, params: None, buffers, more })
    }

    /// Adds a parameters role of element type `dtype` (zeros; write the initial values into
    /// [`GradientPool::params`]), for states with an optimizer: `bind_pool` then updates these.
    pub fn with_params(mut self, device: &wgpu::Device, dtype: DType) -> Result<GradientPool> {
        let packing = Packing::new(&self.layout, dtype, device.limits().max_buffer_size, "pool")?;
        let (buffers, leaves) = packing.allocate(device, &self.layout, POOL_USAGE, "bloop pool params")?;
        self.buffers.extend(buffers);
        self.params = Some(leaves);
        Ok(self)
    }

    /// Leaf `i`'s parameters ([`Error::Optimizer`] unless the pool was made
    /// [`GradientPool::with_params`]; [`Error::IndexOutOfRange`] past the layout's leaves).
    pub fn params(&self, i: usize) -> Result<&LeafBuffer> {
        let params = self
            .params
            .as_deref()
            .ok_or_else(|| Error::Optimizer("the pool has no parameters role (GradientPool::with_params)".into()))?;
        leaf(params, i)
    }

    /// The parameters role, if the pool has one.
    pub fn params_leaves(&self) -> Option<&[LeafBuffer]> {
        self.params.as_deref()
    }

    /// The layout the pool was made for.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Whether the output shares the main gradient's storage.
    pub fn in_place(&self) -> bool {
        self.output.is_none()
    }

    /// Where leaf `i`'s main gradient goes ([`Error::IndexOutOfRange`] past the layout's leaves).
    pub fn main(&self, i: usize) -> Result<&LeafBuffer> {
        leaf(&self.main, i)
    }

    /// Where leaf `i`'s auxiliary gradient goes ([`Error::IndexOutOfRange`] past the leaves).
    pub fn aux(&self, i: usize) -> Result<&LeafBuffer> {
        leaf(&self.aux, i)
    }

    /// Where leaf `i`'s combined direction lands (the main gradient's place when in place;
    /// [`Error::IndexOutOfRange`] past the leaves).
    pub fn output(&self, i: usize) -> Result<&LeafBuffer> {
        leaf(self.output_leaves(), i)
    }

    /// Every leaf's main-gradient view.
    pub fn main_leaves(&self) -> &[LeafBuffer] {
        &self.main
    }

    /// Every leaf's aux-gradient view.
    pub fn aux_leaves(&self) -> &[LeafBuffer] {
        &self.aux
    }

    /// Every leaf's output view.
    pub fn output_leaves(&self) -> &[LeafBuffer] {
        self.output.as_deref().unwrap_or(&self.main)
    }

    /// How many gradients each leaf has (2, or k + 1 for a hierarchy's pool).
    pub fn gradient_count(&self) -> usize {
        2 + self.more.len()
    }

    /// Every leaf's gradient of loss `level` (0 is the main loss, 1 the first aux loss);
    /// `None` past [`GradientPool::gradient_count`].
    pub fn gradient_leaves(&self, level: usize) -> Option<&[LeafBuffer]> {
        match level {
            0 => Some(&self.main),
            1 => Some(&self.aux),
            _ => self.more.get(level - 2).map(Vec::as_slice),
        }
    }

    /// Where leaf `i`'s gradient of loss `level` goes ([`Error::IndexOutOfRange`] past the
    /// pool's losses or the layout's leaves).
    pub fn gradient(&self, level: usize, i: usize) -> Result<&LeafBuffer> {
        let leaves = self.gradient_leaves(level).ok_or(Error::IndexOutOfRange {
            what: "loss",
            index: level,
            count: self.gradient_count(),
        })?;
        leaf(leaves, i)
    }

    /// Every buffer the pool owns (for users who bind whole buffers).
    pub fn buffers(&self) -> &[wgpu::Buffer] {
        &self.buffers
    }
}

/// Leaf `i` of a role, or the error naming the index and the leaf count.
fn leaf(leaves: &[LeafBuffer], i: usize) -> Result<&LeafBuffer> {
    leaves.get(i).ok_or(Error::IndexOutOfRange { what: "leaf", index: i, count: leaves.len() })
}
