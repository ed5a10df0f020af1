//! Explicit, blocking transfers between host and GPU. Never used on the step's hot path:
//! tests, checkpoints and evaluation call these when they choose to wait.

use crate::error::{Error, Result};
use crate::layout::{LeafBuffer, Role, ELEMENT_SIZE};

/// Copies each leaf to the host and waits for the GPU. The buffers need `COPY_SRC`.
pub fn read_leaves(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    leaves: &[LeafBuffer],
) -> Result<Vec<Vec<f32>>> {
    for leaf in leaves {
        if !leaf.buffer.usage().contains(wgpu::BufferUsages::COPY_SRC) {
            return Err(Error::MissingUsage {
                leaf: format!("at byte {}", leaf.offset),
                role: Role::Output,
                actual: leaf.buffer.usage(),
                missing: wgpu::BufferUsages::COPY_SRC,
            });
        }
    }
    // One staging buffer per batch of leaves that fits the device's buffer size limit.
    let max = device.limits().max_buffer_size;
    let mut batches: Vec<(u64, Vec<&LeafBuffer>)> = Vec::new();
    for leaf in leaves {
        let size = leaf.len * ELEMENT_SIZE;
        match batches.last_mut() {
            Some((total, batch)) if *total + size <= max => {
                *total += size;
                batch.push(leaf);
            }
            _ => batches.push((size, vec![leaf])),
        }
    }
    let mut encoder = device.create_command_encoder(&Default::default());
    let staging = crate::context::gpu_scope(device, "allocating readback buffers", || {
        batches
            .iter()
            .map(|(total, batch)| {
                let staging = device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("bloop readback"),
                    size: (*total).max(ELEMENT_SIZE),
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                let mut at = 0;
                for leaf in batch {
                    let size = leaf.len * ELEMENT_SIZE;
                    encoder.copy_buffer_to_buffer(&leaf.buffer, leaf.offset, &staging, at, size);
                    at += size;
                }
                staging
            })
            .collect::<Vec<_>>()
    })?;
    queue.submit([encoder.finish()]);
    let mut out = Vec::with_capacity(leaves.len());
    for (staging, (_, batch)) in staging.iter().zip(&batches) {
        let bytes = map_and_read(device, staging)?;
        let values: &[f32] = bytemuck::cast_slice(&bytes);
        let mut start = 0;
        for leaf in batch {
            let end = start + leaf.len as usize;
            out.push(values[start..end].to_vec());
            start = end;
        }
    }
    Ok(out)
}

/// Maps a whole `MAP_READ` buffer, blocking until the GPU is done with it, and copies it out.
pub(crate) fn map_and_read(device: &wgpu::Device, buffer: &wgpu::Buffer) -> Result<Vec<u8>> {
    let (sender, receiver) = futures::channel::oneshot::channel();
    buffer.map_async(wgpu::MapMode::Read, .., move |result| {
        let _ = sender.send(result);
    });
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| Error::Readback(e.to_string()))?;
    pollster::block_on(receiver)
        .map_err(|_| Error::Readback("the map callback was dropped".into()))?
        .map_err(|e| Error::Readback(e.to_string()))?;
    let bytes = buffer
        .get_mapped_range(..)
        .map_err(|e| Error::Readback(e.to_string()))?
        .to_vec();
    buffer.unmap();
    Ok(bytes)
}

/// Writes host values into leaves (through the queue: they land before the next submit).
pub(crate) fn write_leaves(queue: &wgpu::Queue, leaves: &[LeafBuffer], values: &[Vec<f32>]) {
    for (leaf, v) in leaves.iter().zip(values) {
        queue.write_buffer(&leaf.buffer, leaf.offset, bytemuck::cast_slice(v));
    }
}
