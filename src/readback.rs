//! Explicit transfers between host and GPU that wait for it. Never used on the step's hot
//! path: tests, checkpoints and evaluation call these when they choose to wait.
//!
//! Each read has an async form that works everywhere, WebGPU in a browser or Node included
//! (where the device cannot be polled to completion and only the mapping's callback says the
//! data is there), and a blocking form built on it that exists only off wasm, where nothing
//! may block.

use crate::error::{Error, Result};
use crate::layout::{LeafBuffer, Role};

/// Copies each leaf to the host (as f32, whatever its element type) and waits for the GPU.
/// The buffers need `COPY_SRC`, element-aligned offsets and whole 4-byte words inside the
/// buffer, and must not be mapped; leaves are named by their index in `leaves` in the errors.
/// Blocks; [`read_leaves_async`] is the form for wasm.
#[cfg(not(target_arch = "wasm32"))]
pub fn read_leaves(device: &wgpu::Device, queue: &wgpu::Queue, leaves: &[LeafBuffer]) -> Result<Vec<Vec<f32>>> {
    pollster::block_on(read_leaves_async(device, queue, leaves))
}

/// [`read_leaves`] as a future that resolves once the GPU has copied the leaves out.
pub async fn read_leaves_async(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    leaves: &[LeafBuffer],
) -> Result<Vec<Vec<f32>>> {
    for (i, leaf) in leaves.iter().enumerate() {
        let name = || format!("{i} (at byte {})", leaf.offset);
        let role = Role::Output;
        if !leaf.buffer.usage().contains(wgpu::BufferUsages::COPY_SRC) {
            return Err(Error::MissingUsage {
                leaf: name(),
                role,
                actual: leaf.buffer.usage(),
                missing: wgpu::BufferUsages::COPY_SRC,
            });
        }
        if leaf.offset % leaf.dtype.size() != 0 {
            let alignment = leaf.dtype.size();
            return Err(Error::MisalignedOffset { leaf: name(), role, offset: leaf.offset, alignment });
        }
        let words = leaf.word_range();
        if words.end > leaf.buffer.size() || words.end == u64::MAX {
            let (start, end, buffer_size) = (leaf.offset, leaf.byte_range().end, leaf.buffer.size());
            return Err(Error::OutOfRange { leaf: name(), role, start, end, buffer_size });
        }
        crate::validate::not_mapped(&leaf.buffer, name, role)?;
    }
    // One staging buffer per batch of leaves that fits the device's buffer size limit.
    let max = device.limits().max_buffer_size;
    let mut batches: Vec<(u64, Vec<&LeafBuffer>)> = Vec::new();
    for leaf in leaves {
        let size = leaf.word_range().end - leaf.word_range().start;
        match batches.last_mut() {
            Some((total, batch)) if *total + size <= max => {
                *total += size;
                batch.push(leaf);
            }
            _ => batches.push((size, vec![leaf])),
        }
    }
    // Everything that talks to wgpu runs inside error scopes, so a lost device or an invalid
    // buffer comes back as an error instead of wgpu's default panic.
    let staging = crate::context::gpu_scope(device, "reading back", || {
        let mut encoder = device.create_command_encoder(&Default::default());
        let staging: Vec<wgpu::Buffer> = batches
            .iter()
            .map(|(total, batch)| {
                let staging = device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("bloop readback"),
                    size: (*total).max(4),
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                let mut at = 0;
                for leaf in batch {
                    let words = leaf.word_range();
                    encoder.copy_buffer_to_buffer(&leaf.buffer, words.start, &staging, at, words.end - words.start);
                    at += words.end - words.start;
                }
                staging
            })
            .collect();
        queue.submit([encoder.finish()]);
        staging.into_iter().map(|b| (start_map(&b), b)).collect::<Vec<_>>()
    })?;
    let mut out = Vec::with_capacity(leaves.len());
    for ((mapped, staging), (_, batch)) in staging.into_iter().zip(&batches) {
        let bytes = finish_map(device, mapped, &staging).await?;
        let mut at = 0;
        for leaf in batch {
            let words = leaf.word_range();
            let skip = (leaf.offset - words.start) as usize;
            let len = (leaf.len * leaf.dtype.size()) as usize;
            out.push(leaf.dtype.decode(&bytes[at + skip..at + skip + len]));
            at += (words.end - words.start) as usize;
        }
    }
    Ok(out)
}

pub(crate) type MapResult = futures::channel::oneshot::Receiver<std::result::Result<(), wgpu::BufferAsyncError>>;

/// Starts mapping a whole `MAP_READ` buffer.
pub(crate) fn start_map(buffer: &wgpu::Buffer) -> MapResult {
    let (sender, receiver) = futures::channel::oneshot::channel();
    buffer.map_async(wgpu::MapMode::Read, .., move |result| {
        let _ = sender.send(result);
    });
    receiver
}

/// Waits for a mapping started by [`start_map`] and copies the buffer out. Natively the
/// device is polled until the GPU is idle, so the callback has run before the await; WebGPU
/// has no such poll and runs the callback from its own event loop.
pub(crate) async fn finish_map(device: &wgpu::Device, receiver: MapResult, buffer: &wgpu::Buffer) -> Result<Vec<u8>> {
    #[cfg(not(target_arch = "wasm32"))]
    device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| Error::Readback(e.to_string()))?;
    #[cfg(target_arch = "wasm32")]
    let _ = device;
    receiver
        .await
        .map_err(|_| Error::Readback("the map callback was dropped".into()))?
        .map_err(|e| Error::Readback(e.to_string()))?;
    let bytes = buffer.get_mapped_range(..).map_err(|e| Error::Readback(e.to_string()))?.to_vec();
    buffer.unmap();
    Ok(bytes)
}

/// Writes host values into word-aligned leaves the library placed (through the queue: they
/// land before the next submit). A 16-bit leaf of odd length also writes a zero into the
/// padding half after it.
pub(crate) fn write_leaves(queue: &wgpu::Queue, leaves: &[LeafBuffer], values: &[Vec<f32>]) {
    for (leaf, v) in leaves.iter().zip(values) {
        debug_assert_eq!(leaf.offset % 4, 0, "only for leaves the library placed");
        let mut bytes = leaf.dtype.encode(v);
        bytes.resize(bytes.len().next_multiple_of(4), 0);
        queue.write_buffer(&leaf.buffer, leaf.offset, &bytes);
    }
}
