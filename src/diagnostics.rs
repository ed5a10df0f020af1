//! Per-step scalars (projection ratio, dot products, norms, cosine, the guard's skip flag),
//! read back without ever stalling the training loop.
//!
//! Each step's finalize stage leaves its scalars in a small GPU buffer of the state. A
//! [`DiagnosticsRing`] records a copy of that buffer into one of a few mappable buffers right
//! after the step, has it mapped when the caller submits that encoder (wgpu's
//! `map_buffer_on_submit`: mapping before the submit would make the submit fail), and hands the values back
//! from [`DiagnosticsRing::poll`] some steps later, when the GPU has caught up. `poll` only
//! ever polls the device without waiting; when every slot is still in flight, `record` drops
//! that step's values instead of waiting for a slot.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};
pub use crate::scalars::StepDiagnostics;
use crate::scalars::MAX_SCALARS_BYTES;
use crate::state::BloopState;

const FREE: u8 = 0;
const RECORDED: u8 = 1;
const MAPPED: u8 = 3;
const FAILED: u8 = 4;

struct Slot {
    buffer: wgpu::Buffer,
    state: Arc<AtomicU8>,
    step: u64,
    /// The recorded state's hierarchy levels (0 for the other methods).
    levels: u8,
    /// Fires once the mapping's callback has run, for [`DiagnosticsRing::flush_async`].
    landed: Option<futures::channel::oneshot::Receiver<()>>,
}

/// A ring of mappable buffers that returns each step's scalars some steps later, never blocking.
pub struct DiagnosticsRing {
    device: wgpu::Device,
    slots: Vec<Slot>,
    /// Slots in the order their steps were recorded.
    order: VecDeque<usize>,
    dropped: u64,
}

impl DiagnosticsRing {
    /// A ring of `capacity` slots (the number of steps that can be in flight at once; 0 is
    /// taken as 1).
    pub fn new(device: &wgpu::Device, capacity: usize) -> DiagnosticsRing {
        let slots = (0..capacity.max(1))
            .map(|_| Slot {
                buffer: device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("bloop diagnostics"),
                    size: MAX_SCALARS_BYTES,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                }),
                state: Arc::new(AtomicU8::new(FREE)),
                step: 0,
                levels: 0,
                landed: None,
            })
            .collect();
        DiagnosticsRing { device: device.clone(), slots, order: VecDeque::new(), dropped: 0 }
    }

    /// Records a copy of the scalars of the step `state` recorded last; call right after
    /// `record_step`, into the same encoder. Returns false, and drops the step's values,
    /// when every slot is still in flight. The slot is mapped when that encoder is submitted.
    ///
    /// [`Error::OtherDevice`] for a state of another device than the ring's. The caller's
    /// duty (wgpu does not show it): `encoder` belongs to the ring's device and is submitted;
    /// a slot whose encoder is dropped unsubmitted stays in flight.
    pub fn record(&mut self, encoder: &mut wgpu::CommandEncoder, state: &BloopState) -> Result<bool> {
        if state.kernels().device() != &self.device {
            return Err(Error::OtherDevice { what: "the state", other: "the diagnostics ring" });
        }
        let Some(index) = self.slots.iter().position(|s| s.state.load(Ordering::Acquire) == FREE) else {
            self.dropped += 1;
            return Ok(false);
        };
        let slot = &mut self.slots[index];
        let scalars = state.scalars_buffer();
        encoder.copy_buffer_to_buffer(scalars, 0, &slot.buffer, 0, scalars.size().min(MAX_SCALARS_BYTES));
        let mapped = slot.state.clone();
        let (sender, landed) = futures::channel::oneshot::channel();
        slot.landed = Some(landed);
        encoder.map_buffer_on_submit(&slot.buffer, wgpu::MapMode::Read, .., move |result| {
            mapped.store(if result.is_ok() { MAPPED } else { FAILED }, Ordering::Release);
            let _ = sender.send(());
        });
        slot.step = state.steps().saturating_sub(1);
        slot.levels = state.config().level_lambdas().len() as u8;
        // Stored before the submit can run the callback: RECORDED never overwrites MAPPED.
        slot.state.store(RECORDED, Ordering::Release);
        self.order.push_back(index);
        Ok(true)
    }

    /// Nothing to do any more: each copy is mapped when the encoder carrying it is submitted,
    /// so calling this early (which used to make the caller's submit fail) is harmless. Kept
    /// so that existing training loops compile.
    pub fn submitted(&mut self) {}

    /// Polls the device once, without waiting, and returns the values of every step that has
    /// landed, oldest first.
    pub fn poll(&mut self) -> Result<Vec<StepDiagnostics>> {
        self.device.poll(wgpu::PollType::Poll).map_err(|e| Error::Readback(e.to_string()))?;
        self.collect()
    }

    /// Waits for every step in flight and returns their values (end of training, tests).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn flush(&mut self) -> Result<Vec<StepDiagnostics>> {
        pollster::block_on(self.flush_async())
    }

    /// [`DiagnosticsRing::flush`] as a future (the form for wasm, where only the mappings'
    /// callbacks say that the values are there).
    pub async fn flush_async(&mut self) -> Result<Vec<StepDiagnostics>> {
        #[cfg(not(target_arch = "wasm32"))]
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| Error::Readback(e.to_string()))?;
        for slot in &mut self.slots {
            if let Some(landed) = slot.landed.take() {
                // A dropped sender means the callback will never run: collect reports the slot.
                let _ = landed.await;
            }
        }
        self.collect()
    }

    /// Steps whose values were dropped because every slot was in flight.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn collect(&mut self) -> Result<Vec<StepDiagnostics>> {
        let mut out = Vec::new();
        // In recording order, stopping at the first step still in flight.
        while let Some(&index) = self.order.front() {
            let slot = &self.slots[index];
            match slot.state.load(Ordering::Acquire) {
                MAPPED => {
                    let words: Vec<u32> = {
                        let view = slot.buffer.get_mapped_range(..).map_err(|e| Error::Readback(e.to_string()))?;
                        bytemuck::cast_slice(&view).to_vec()
                    };
                    slot.buffer.unmap();
                    out.push(StepDiagnostics::from_level_words(slot.step, &words, slot.levels));
                }
                FAILED => return Err(Error::Readback("mapping a diagnostics buffer failed".into())),
                _ => break,
            }
            slot.state.store(FREE, Ordering::Release);
            self.order.pop_front();
        }
        Ok(out)
    }
}
