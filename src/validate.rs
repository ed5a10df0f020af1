//! Checks of user-provided leaf buffers, before anything is recorded or changed.

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::layout::{Layout, LeafBuffer, Role};

/// One entry per leaf, matching lengths and element type, needed usage, element-aligned
/// offsets, in range.
///
/// Offsets need only element alignment, not `min_storage_buffer_offset_alignment`: the
/// library binds aligned windows around the leaves itself, so tightly packed flat gradient
/// buffers work as they are. A 16-bit leaf may start or end in the middle of a 4-byte word
/// (its neighbour's half is never written), but the whole word must lie inside the buffer,
/// since the GPU reads and copies whole words.
pub(crate) fn leaves(
    layout: &Layout,
    role: Role,
    leaves: &[LeafBuffer],
    usage: wgpu::BufferUsages,
    dtype: DType,
) -> Result<()> {
    if leaves.len() != layout.len() {
        return Err(Error::LeafCount { role, expected: layout.len(), got: leaves.len() });
    }
    for (spec, leaf) in layout.leaves().iter().zip(leaves) {
        let name = || spec.name.clone();
        if leaf.len != spec.len {
            return Err(Error::LeafLength { leaf: name(), role, expected: spec.len, got: leaf.len });
        }
        if leaf.dtype != dtype {
            return Err(Error::WrongType { leaf: name(), role, expected: dtype, got: leaf.dtype });
        }
        let actual = leaf.buffer.usage();
        if !actual.contains(usage) {
            return Err(Error::MissingUsage { leaf: name(), role, actual, missing: usage - actual });
        }
        if leaf.offset % dtype.size() != 0 {
            return Err(Error::MisalignedOffset { leaf: name(), role, offset: leaf.offset, alignment: dtype.size() });
        }
        let end = leaf.offset.checked_add(leaf.len * dtype.size()).and_then(|end| end.checked_next_multiple_of(4));
        if end.is_none_or(|end| end > leaf.buffer.size()) {
            return Err(Error::OutOfRange {
                leaf: name(),
                role,
                start: leaf.offset,
                end: end.unwrap_or(u64::MAX),
                buffer_size: leaf.buffer.size(),
            });
        }
    }
    // Once per run of leaves in one buffer: layouts of 10^5 leaves in a few buffers are common.
    let mut last: Option<&wgpu::Buffer> = None;
    for (spec, leaf) in layout.leaves().iter().zip(leaves) {
        if last != Some(&leaf.buffer) {
            not_mapped(&leaf.buffer, || spec.name.clone(), role)?;
            last = Some(&leaf.buffer);
        }
    }
    Ok(())
}

/// Refuses a mapped or destroyed buffer (mapped at creation, or by `map_async` once the
/// mapping landed; or `destroy`ed): the caller's submit would fail on it. wgpu shows both
/// only through a view of the buffer, so a `map_async` still pending is not seen.
pub(crate) fn not_mapped(buffer: &wgpu::Buffer, leaf: impl FnOnce() -> String, role: Role) -> Result<()> {
    // The probe reads wgpu-core's refusal; WebGPU's back-end words it otherwise (every buffer
    // would look mapped), and the browser itself validates a mapped buffer at submit, into the
    // caller's error scopes.
    if cfg!(target_arch = "wasm32") {
        return Ok(());
    }
    if buffer.size() < 4 {
        return Ok(()); // no view of a whole word fits: too small to probe
    }
    // A view exists only while the buffer is mapped. wgpu-core says "not mapped" for an idle
    // buffer and "destroyed" for a destroyed one; any other refusal (a range outside the
    // mapped one, an overlap with a view the caller holds) means it is mapped.
    let message = match buffer.get_mapped_range(0..4) {
        Ok(_) => return Err(Error::BufferMapped { leaf: leaf(), role }),
        Err(e) => e.to_string(),
    };
    if message.contains("destroyed") {
        return Err(Error::BufferDestroyed { leaf: leaf(), role });
    }
    if !message.contains("not mapped") {
        return Err(Error::BufferMapped { leaf: leaf(), role });
    }
    Ok(())
}

/// Every distinct buffer of `roles` once, with the first leaf and role that uses it, for
/// [`not_mapped`] checks when a step is recorded.
pub(crate) fn distinct_buffers(layout: &Layout, roles: &[(Role, &[LeafBuffer])]) -> Vec<(wgpu::Buffer, String, Role)> {
    #[allow(clippy::mutable_key_type)] // buffers order by identity
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for &(role, leaves) in roles {
        for (spec, leaf) in layout.leaves().iter().zip(leaves) {
            if seen.insert(&leaf.buffer) {
                out.push((leaf.buffer.clone(), spec.name.clone(), role));
            }
        }
    }
    out
}

/// Host values for a role stored as `dtype`: one vector per leaf of the leaf's length, every
/// element finite and finite once rounded to `dtype` (70000 is finite in f32 but inf in f16).
/// A non-finite average or optimizer state would poison every later step, and the guard
/// checks gradients only.
pub(crate) fn values(layout: &Layout, role: Role, values: &[Vec<f32>], dtype: DType) -> Result<()> {
    if values.len() != layout.len() {
        return Err(Error::LeafCount { role, expected: layout.len(), got: values.len() });
    }
    for (leaf, v) in layout.leaves().iter().zip(values) {
        if v.len() as u64 != leaf.len {
            return Err(Error::LeafLength { leaf: leaf.name.clone(), role, expected: leaf.len, got: v.len() as u64 });
        }
        if let Some((index, &value)) = v.iter().enumerate().find(|(_, x)| !x.is_finite()) {
            return Err(Error::NonFiniteValue { leaf: leaf.name.clone(), role, index: index as u64, value });
        }
        if dtype != DType::F32 {
            if let Some((index, &value)) = v.iter().enumerate().find(|(_, &x)| !dtype.round(x).is_finite()) {
                return Err(Error::Unrepresentable {
                    leaf: leaf.name.clone(),
                    role,
                    index: index as u64,
                    value,
                    dtype,
                });
            }
        }
    }
    Ok(())
}

/// No output range may overlap another range of the step, except that leaf `i`'s output may
/// be exactly leaf `i`'s main gradient (in place). Inputs may overlap each other: they are
/// only read.
pub(crate) fn outputs(layout: &Layout, main: &[LeafBuffer], aux: &[LeafBuffer], out: &[LeafBuffer]) -> Result<()> {
    outputs_of(layout, &[(Role::MainGrad, main), (Role::AuxGrad, aux)], out)
}

/// [`outputs`] for any list of inputs; leaf `i`'s output may be exactly leaf `i` of the first.
pub(crate) fn outputs_of(layout: &Layout, inputs: &[(Role, &[LeafBuffer])], out: &[LeafBuffer]) -> Result<()> {
    struct Range<'a> {
        buffer: &'a wgpu::Buffer,
        bytes: std::ops::Range<u64>,
        leaf: usize,
        role: Role,
    }
    let first = inputs.first().map(|i| i.0);
    let mut ranges: Vec<Range> = inputs
        .iter()
        .copied()
        .chain([(Role::Output, out)])
        .flat_map(|(role, leaves)| {
            leaves.iter().enumerate().map(move |(leaf, l)| Range {
                buffer: &l.buffer,
                bytes: l.byte_range(),
                leaf,
                role,
            })
        })
        .collect();
    ranges.sort_by(|a, b| a.buffer.cmp(b.buffer).then(a.bytes.start.cmp(&b.bytes.start)));
    for (i, a) in ranges.iter().enumerate() {
        for b in ranges[i + 1..].iter().take_while(|b| b.buffer == a.buffer && b.bytes.start < a.bytes.end) {
            let in_place = a.leaf == b.leaf
                && a.bytes == b.bytes
                && ((Some(a.role) == first && b.role == Role::Output)
                    || (a.role == Role::Output && Some(b.role) == first));
            if (a.role == Role::Output || b.role == Role::Output) && !in_place {
                let (o, other) = if a.role == Role::Output { (a, b) } else { (b, a) };
                return Err(Error::OverlappingOutput {
                    leaf: layout.leaves()[o.leaf].name.clone(),
                    other: layout.leaves()[other.leaf].name.clone(),
                    other_role: other.role,
                });
            }
        }
    }
    Ok(())
}

/// Records `copies` (source, target) into a throwaway encoder inside error scopes and finishes
/// it without submitting, so a buffer of another device, a destroyed buffer or a bad range is
/// reported here as an error instead of panicking later in the caller's encoder.
/// Buffer copies move whole 4-byte words, so a 16-bit source must start on a word boundary.
pub(crate) fn copies(
    device: &wgpu::Device,
    layout: &Layout,
    role: Role,
    copies: &[(&LeafBuffer, &LeafBuffer)],
) -> Result<()> {
    for (leaf, (src, _)) in layout.leaves().iter().zip(copies) {
        if src.offset % 4 != 0 {
            return Err(Error::MisalignedOffset { leaf: leaf.name.clone(), role, offset: src.offset, alignment: 4 });
        }
    }
    crate::context::gpu_scope(device, "checking copies", || {
        let mut encoder = device.create_command_encoder(&Default::default());
        for (src, dst) in copies {
            encoder.copy_buffer_to_buffer(&src.buffer, src.offset, &dst.buffer, dst.offset, copy_size(src));
        }
        drop(encoder.finish());
    })
}

/// Bytes a copy of `leaf` moves: whole words (a 16-bit leaf of odd length carries its
/// neighbour's half along; the targets, EMA leaves, have room for it in their padding).
pub(crate) fn copy_size(leaf: &LeafBuffer) -> u64 {
    (leaf.len * leaf.dtype.size()).next_multiple_of(4)
}

/// Parameter ranges may overlap nothing else of the step: no gradient, output or other leaf's
/// parameters.
pub(crate) fn params(layout: &Layout, others: &[(Role, &[LeafBuffer])], params: &[LeafBuffer]) -> Result<()> {
    for (leaf, p) in params.iter().enumerate() {
        for &(role, leaves) in others.iter().chain(std::iter::once(&(Role::Params, params))) {
            for (other, o) in leaves.iter().enumerate() {
                if o.buffer != p.buffer || (role == Role::Params && other == leaf) {
                    continue;
                }
                // 16-bit leaves may share a word (packed halves are stored atomically).
                let (a, b) = (p.byte_range(), o.byte_range());
                if a.start < b.end && b.start < a.end {
                    return Err(Error::OverlappingParams {
                        leaf: layout.leaves()[leaf].name.clone(),
                        other: layout.leaves()[other].name.clone(),
                        other_role: role,
                    });
                }
            }
        }
    }
    Ok(())
}
