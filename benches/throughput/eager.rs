//! The unfused baseline: each method written as the reference code's sequence of array
//! operations, one kernel each, as an eager framework (PyTorch eager, un-jitted JAX) runs it.
//! It works on one flat array per role, which spares it the per-leaf launches an eager
//! framework would also pay on a model: the comparison flatters the baseline.

use bloop::{Config, Method};

pub use super::copy::{grid, storage};

const SOURCE: &str = include_str!("eager.wgsl");
const SCALARS: u64 = 16;

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct OpParams {
    kind: u32,
    a: u32,
    b: u32,
    out: u32,
    alpha: f32,
    cap: f32,
    len: u32,
    _pad: u32,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Arr {
    Main,
    Aux,
    Ema,
    AuxEma,
    Out,
    Tmp(usize),
    Partials,
}

#[derive(Clone, Copy)]
enum Entry {
    Elementwise,
    DotPartial,
    DotFinal,
    Scalar,
}

struct OpSpec {
    entry: Entry,
    params: OpParams,
    x: Arr,
    y: Arr,
    out: Arr,
    workgroups: [u32; 2],
}

/// A compute-stage storage buffer entry of a bind group layout (shared with the copy kernel).
pub struct Eager {
    pipelines: [wgpu::ComputePipeline; 4],
    ops: Vec<(usize, wgpu::BindGroup, [u32; 2])>,
    /// Bytes the operator sequence reads and writes per element.
    pub bytes_per_element: u64,
}

struct Program {
    n: u64,
    max: u64,
    ops: Vec<OpSpec>,
    bytes: u64,
    temps: usize,
    next_scalar: u32,
}

impl Program {
    fn tmp(&mut self) -> Arr {
        self.temps += 1;
        Arr::Tmp(self.temps - 1)
    }

    fn elementwise(&mut self, kind: u32, x: Arr, y: Arr, alpha: f32, scalar: u32) -> Arr {
        let out = self.tmp();
        let params = OpParams { kind, a: scalar, alpha, len: self.n as u32, ..Default::default() };
        let workgroups = grid(self.n.div_ceil(256), self.max);
        self.ops.push(OpSpec { entry: Entry::Elementwise, params, x, y, out, workgroups });
        self.bytes += if kind < 2 { 12 } else { 8 };
        out
    }

    fn sub(&mut self, x: Arr, y: Arr) -> Arr {
        self.elementwise(0, x, y, 0.0, 0)
    }
    fn add(&mut self, x: Arr, y: Arr) -> Arr {
        self.elementwise(1, x, y, 0.0, 0)
    }
    fn scale(&mut self, alpha: f64, x: Arr) -> Arr {
        self.elementwise(2, x, x, alpha as f32, 0)
    }
    fn scale_by(&mut self, scalar: u32, x: Arr) -> Arr {
        self.elementwise(3, x, x, 0.0, scalar)
    }

    /// `e + b * (g - e)` as three operators.
    fn ema(&mut self, e: Arr, g: Arr, b: f64) -> Arr {
        let diff = self.sub(g, e);
        let step = self.scale(b, diff);
        self.add(e, step)
    }

    fn dot(&mut self, x: Arr, y: Arr) -> u32 {
        let tiles = self.n.div_ceil(4096);
        let params = OpParams { len: self.n as u32, ..Default::default() };
        self.ops.push(OpSpec {
            entry: Entry::DotPartial,
            params,
            x,
            y,
            out: Arr::Partials,
            workgroups: grid(tiles, self.max),
        });
        let out = self.next_scalar;
        self.next_scalar += 1;
        let params = OpParams { out, len: tiles as u32, ..Default::default() };
        self.ops.push(OpSpec {
            entry: Entry::DotFinal,
            params,
            x: Arr::Partials,
            y: Arr::Partials,
            out: Arr::Partials,
            workgroups: [1, 1],
        });
        self.bytes += if x == y { 4 } else { 8 };
        out
    }

    fn scalar(&mut self, kind: u32, a: u32, b: u32, alpha: f64, cap: Option<f64>) -> u32 {
        let out = self.next_scalar;
        self.next_scalar += 1;
        let cap = cap.map_or(f32::MAX, |c| c as f32);
        let params = OpParams { kind, a, b, out, alpha: alpha as f32, cap, ..Default::default() };
        self.ops.push(OpSpec {
            entry: Entry::Scalar,
            params,
            x: Arr::Partials,
            y: Arr::Partials,
            out: Arr::Partials,
            workgroups: [1, 1],
        });
        out
    }

    /// `<x, y> / (<x, x> + eps)`, capped.
    fn ratio(&mut self, x: Arr, y: Arr, config: &Config) -> u32 {
        let dot = self.dot(x, y);
        let sq = self.dot(x, x);
        self.scalar(0, dot, sq, config.eps, config.ratio_cap())
    }
}

impl Eager {
    pub fn new(device: &wgpu::Device, n: u64, config: &Config) -> (Eager, Vec<wgpu::Buffer>) {
        let max = device.limits().max_compute_workgroups_per_dimension as u64;
        let mut p = Program { n, max, ops: Vec::new(), bytes: 0, temps: 0, next_scalar: 0 };
        let (l, s) = (config.lambda, config.scale());
        match config.method {
            Method::Mixed => {
                let t = p.scale(l, Arr::Aux);
                let t = p.add(Arr::Main, t);
                let _ = p.scale(s, t);
            }
            Method::Bloop | Method::DynamicBarrier => {
                let e = p.ema(Arr::Ema, Arr::Main, config.ema);
                let r = p.ratio(e, Arr::Aux, config);
                if config.ratio_only {
                    let c = p.scalar(1, r, 0, l, None);
                    let t1 = p.scale_by(c, Arr::Main);
                    let t2 = p.scale(l, Arr::Aux);
                    let t = p.add(t1, t2);
                    let _ = p.scale(s, t);
                } else {
                    let re = p.scale_by(r, e);
                    let projected = p.sub(Arr::Aux, re);
                    let t = p.scale(l, projected);
                    let t = p.add(Arr::Main, t);
                    let _ = p.scale(s, t);
                }
            }
            Method::PcGrad => {
                let e = p.ema(Arr::Ema, Arr::Main, config.ema);
                let a = p.ema(Arr::AuxEma, Arr::Aux, config.ema);
                let r1 = p.ratio(e, Arr::Aux, config);
                let r2 = p.ratio(a, Arr::Main, config);
                let t = p.scale_by(r1, e);
                let bias = p.sub(Arr::Aux, t);
                let t = p.scale_by(r2, a);
                let train = p.sub(Arr::Main, t);
                let t = p.scale(l, bias);
                let t = p.add(train, t);
                let _ = p.scale(s, t);
            }
            Method::Hierarchy => unimplemented!("the eager baseline covers the two-loss methods"),
        }
        // The last temporary is the direction.
        let last = p.temps - 1;
        for op in &mut p.ops {
            if op.out == Arr::Tmp(last) {
                op.out = Arr::Out;
            }
        }

        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("eager"),
            source: wgpu::ShaderSource::Wgsl(SOURCE.into()),
        });
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: None,
            entries: &[
                wgpu::BindGroupLayoutEntry {
                    binding: 0,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                },
                storage(1, true),
                storage(2, true),
                storage(3, false),
                storage(4, false),
            ],
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: None,
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipelines = ["elementwise", "dot_partial", "dot_final", "scalar"].map(|entry| {
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            })
        });

        let array = |label: &str, len: u64| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: len.max(1) * 4,
                usage: bloop::pool::POOL_USAGE,
                mapped_at_creation: false,
            })
        };
        let inputs: Vec<wgpu::Buffer> = ["main", "aux", "ema", "aux ema"].into_iter().map(|l| array(l, n)).collect();
        let out = array("out", n);
        let temps: Vec<wgpu::Buffer> = (0..p.temps).map(|_| array("tmp", n)).collect();
        let partials = array("partials", n.div_ceil(4096));
        let scalars = array("scalars", SCALARS);
        let buffer = |a: Arr| match a {
            Arr::Main => &inputs[0],
            Arr::Aux => &inputs[1],
            Arr::Ema => &inputs[2],
            Arr::AuxEma => &inputs[3],
            Arr::Out => &out,
            Arr::Tmp(i) => &temps[i],
            Arr::Partials => &partials,
        };
        use wgpu::util::DeviceExt;
        let ops = p
            .ops
            .iter()
            .map(|op| {
                let params = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: None,
                    contents: bytemuck::bytes_of(&op.params),
                    usage: wgpu::BufferUsages::UNIFORM,
                });
                // A reduction's inputs are read-only and its partials writable: the final
                // reduction reads the partials through `x` and writes only `scalars`.
                let out = if matches!(op.entry, Entry::DotFinal | Entry::Scalar) { &temps[0] } else { buffer(op.out) };
                let (x, y) = if matches!(op.entry, Entry::Scalar) {
                    (&inputs[0], &inputs[0])
                } else {
                    (buffer(op.x), buffer(op.y))
                };
                let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: None,
                    layout: &layout,
                    entries: &[
                        wgpu::BindGroupEntry { binding: 0, resource: params.as_entire_binding() },
                        wgpu::BindGroupEntry { binding: 1, resource: x.as_entire_binding() },
                        wgpu::BindGroupEntry { binding: 2, resource: y.as_entire_binding() },
                        wgpu::BindGroupEntry { binding: 3, resource: out.as_entire_binding() },
                        wgpu::BindGroupEntry { binding: 4, resource: scalars.as_entire_binding() },
                    ],
                });
                (op.entry as usize, bind_group, op.workgroups)
            })
            .collect();
        let mut buffers = inputs;
        buffers.push(out);
        (Eager { pipelines, ops, bytes_per_element: p.bytes }, buffers)
    }

    pub fn record(&self, encoder: &mut wgpu::CommandEncoder, timestamps: Option<wgpu::ComputePassTimestampWrites>) {
        let mut pass = encoder
            .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("eager"), timestamp_writes: timestamps });
        for (entry, bind_group, [x, y]) in &self.ops {
            pass.set_pipeline(&self.pipelines[*entry]);
            pass.set_bind_group(0, bind_group, &[]);
            pass.dispatch_workgroups(*x, *y, 1);
        }
    }
}
