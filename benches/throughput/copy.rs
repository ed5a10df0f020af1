//! The roofline: the copy kernel (`copy.wgsl`) over a buffer of a step's size, timed the same
//! way as the step. Shared with the web demo's benchmark panel (`crates/bloop-web`).

/// A storage binding of a compute shader, at `binding`.
pub fn storage(binding: u32, read_only: bool) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }
}

/// A dispatch of `workgroups` workgroups laid out in 2D where one dimension's `max` is too few.
pub fn grid(workgroups: u64, max: u64) -> [u32; 2] {
    let x = workgroups.clamp(1, max);
    [x as u32, workgroups.div_ceil(x).max(1) as u32]
}

/// A buffer a user could bind the library to: the pool's usages, at least 4 bytes.
pub fn storage_buffer(device: &wgpu::Device, label: &str, size: u64) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: size.next_multiple_of(4).max(4),
        usage: bloop::pool::POOL_USAGE,
        mapped_at_creation: false,
    })
}

/// A vec4 copy of `elements` f32 from one buffer to another.
pub struct CopyKernel {
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    workgroups: [u32; 2],
    /// Bytes one run reads and writes.
    pub bytes: u64,
}

impl CopyKernel {
    pub fn new(device: &wgpu::Device, elements: u64) -> CopyKernel {
        let n = elements.next_multiple_of(4);
        let (src, dst) = (storage_buffer(device, "copy src", n * 4), storage_buffer(device, "copy dst", n * 4));
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("copy"),
            source: wgpu::ShaderSource::Wgsl(include_str!("copy.wgsl").into()),
        });
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: None,
            entries: &[storage(0, true), storage(1, false)],
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: None,
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("copy"),
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some("copy"),
            compilation_options: Default::default(),
            cache: None,
        });
        // The bind group holds the buffers alive.
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &layout,
            entries: &[
                wgpu::BindGroupEntry { binding: 0, resource: src.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 1, resource: dst.as_entire_binding() },
            ],
        });
        let max = device.limits().max_compute_workgroups_per_dimension as u64;
        let workgroups = grid((n / 4).div_ceil(256), max);
        CopyKernel { pipeline, bind_group, workgroups, bytes: n * 8 }
    }

    pub fn record(&self, encoder: &mut wgpu::CommandEncoder, timestamps: Option<wgpu::ComputePassTimestampWrites>) {
        let mut pass = encoder
            .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("copy"), timestamp_writes: timestamps });
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.dispatch_workgroups(self.workgroups[0], self.workgroups[1], 1);
    }

    /// GB/s of a run that took `ms`.
    pub fn gbps(&self, ms: f64) -> f64 {
        self.bytes as f64 / (ms * 1e6)
    }
}
