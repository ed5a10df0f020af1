//! Throughput of one full step of every method, against the best the adapter can do.
//!
//! `cargo bench --bench throughput -- --quick` for a short run; `-- --help` lists the options.
//!
//! Times a step with timestamp queries where the adapter has them (else wall time around
//! submit-and-wait), after warm-up, over at least 20 repetitions; reports the median, min and
//! max. Bytes are the fewest each method must move per f32 element
//! (`Config::bytes_per_element`); the roofline is a plain vec4 copy kernel over a buffer of
//! the same size, run in turn with the steps (so a drifting machine moves both alike), as are
//! the pool and the user-buffer arrangements of each method. Baselines: the unfused (eager)
//! sequence of operators on the same adapter, the f64 host reference and a multi-threaded f32
//! host implementation. Then the fused optimizer (SGD, momentum, Adam) against the step followed by
//! a separate optimizer kernel, per layout (`optimizer.rs`), and many small leaves against one
//! leaf of the same size (`leaves.rs`). Writes a table to stdout, `DIR/throughput.json`,
//! `DIR/optimizer.json`, `DIR/leaves.json` and `DIR/throughput.svg`.

mod copy;
mod cpu;
mod eager;
mod hierarchy;
mod layouts;
mod leaves;
mod optimizer;
mod plot;
mod report;

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

use bloop::rng::SplitMix64;
use bloop::{
    BloopState, Config, DType, ElementTypes, EmaInits, ExternalGradients, GpuContext, GradientPool, Kernels, Layout,
    LeafBuffer, Method, Output,
};
use copy::CopyKernel;
use report::{Baseline, Row, Setting, Stats, Timed};

/// Throughput of one full step of every method against a copy kernel on the same adapter, with
/// the unfused baseline and host implementations beside it.
#[derive(clap::Parser)]
#[command(name = "throughput")]
struct Cli {
    /// A short run (under 2 min on lavapipe): sizes up to 2^20, model layouts scaled down 256
    /// times, 20 repetitions, and only the f32 methods with the guard, unguarded and f16 bloop.
    #[arg(long)]
    quick: bool,
    /// Largest single-leaf size, as a power of two [default: 26, or 20 with --quick].
    #[arg(long, value_parser = clap::value_parser!(u32).range(16..=30))]
    max_log2: Option<u32>,
    /// Divide every leaf of the model layouts by this [default: 1, or 256 with --quick].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    layout_scale: Option<u64>,
    /// Timed repetitions per row, at least 20 [default: 30, or 20 with --quick].
    #[arg(long, value_parser = clap::value_parser!(u64).range(20..))]
    reps: Option<u64>,
    /// Leave out the model layouts (ResNet-50, GPT-2 small).
    #[arg(long)]
    no_models: bool,
    /// Leave out the host baselines.
    #[arg(long)]
    no_cpu: bool,
    /// Folder for throughput.json and throughput.svg.
    #[arg(long, default_value = "target/bench")]
    out: std::path::PathBuf,
    /// Write the model layouts as JSON to this file (for the GPU peers script) and exit.
    #[arg(long, value_name = "PATH")]
    layouts_json: Option<std::path::PathBuf>,
    /// Only the fused-optimizer rows: the step with SGD, momentum and Adam fused, against the
    /// step followed by a separate optimizer kernel.
    #[arg(long)]
    optimizers_only: bool,
    /// The most buffers per gradient and output role one dispatch binds
    /// (`KernelOptions::max_slots`; 1 records one dispatch per distinct buffer) [default: 16].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max_slots: Option<u32>,
    /// Scalar loads and stores everywhere (`KernelOptions::vec4` off), to compare.
    #[arg(long)]
    no_vec4: bool,
    /// How the user-buffer arrangements bind their buffers (`KernelOptions::binding_arrays`):
    /// `auto` by the device's features, `on` binding arrays, `off` slots, `both` each
    /// arrangement twice in the same rounds (`per-leaf/arrays`, `per-leaf/slots`, ...). The
    /// pool keeps the default.
    #[arg(long, value_enum, default_value = "auto")]
    binding_arrays: BindingArrays,
    /// Elements per workgroup's tile (`KernelOptions::tile_len`) [default: by adapter, 4096 on
    /// a GPU and 16384 on a CPU adapter].
    #[arg(long)]
    tile_len: Option<u32>,
    /// Only the many-leaves rows: a step over many small leaves against one leaf of the same
    /// size, and the overhead per leaf (written to DIR/leaves.json).
    #[arg(long)]
    leaves_only: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// `--binding-arrays`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum BindingArrays {
    Auto,
    On,
    Off,
    Both,
}

impl BindingArrays {
    /// The paths each arrangement is timed with: the option, and what its path name gets.
    fn paths(self) -> &'static [(Option<bool>, &'static str)] {
        match self {
            BindingArrays::Auto => &[(None, "")],
            BindingArrays::On => &[(Some(true), "")],
            BindingArrays::Off => &[(Some(false), "")],
            BindingArrays::Both => &[(Some(true), "/arrays"), (Some(false), "/slots")],
        }
    }
}

struct Args {
    max_log2: u32,
    layout_scale: u64,
    reps: usize,
    models: bool,
    cpu: bool,
    out: std::path::PathBuf,
    quick: bool,
    optimizers_only: bool,
    leaves_only: bool,
    max_slots: u32,
    vec4: bool,
    tile_len: Option<u32>,
    binding_arrays: BindingArrays,
}

impl Args {
    /// Explicit values win over `--quick`'s, which win over the defaults.
    fn from(cli: Cli) -> Args {
        let (max_log2, layout_scale, reps) = if cli.quick { (20, 256, 20) } else { (26, 1, 30) };
        Args {
            max_log2: cli.max_log2.unwrap_or(max_log2),
            layout_scale: cli.layout_scale.unwrap_or(layout_scale),
            reps: cli.reps.map_or(reps, |r| r as usize),
            models: !cli.no_models,
            cpu: !cli.no_cpu,
            out: cli.out,
            quick: cli.quick,
            optimizers_only: cli.optimizers_only,
            leaves_only: cli.leaves_only,
            max_slots: cli.max_slots.unwrap_or(bloop::KernelOptions::default().max_slots),
            vec4: !cli.no_vec4,
            tile_len: cli.tile_len,
            binding_arrays: cli.binding_arrays,
        }
    }
}

/// Records one timed run into an encoder (with the pass's timestamp writes, where the clock
/// has them).
type Record<'r> = dyn FnMut(&mut wgpu::CommandEncoder, Option<wgpu::ComputePassTimestampWrites>) + 'r;

/// How step times are taken.
enum Clock {
    Timestamps { set: wgpu::QuerySet, resolve: wgpu::Buffer, read: wgpu::Buffer, period_ns: f64 },
    Wall,
}

impl Clock {
    fn new(gpu: &GpuContext) -> Clock {
        if !gpu.device.features().contains(wgpu::Features::TIMESTAMP_QUERY) {
            return Clock::Wall;
        }
        let set = gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: None,
            ty: wgpu::QueryType::Timestamp,
            count: 2,
        });
        let buffer = |usage| {
            gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: 16,
                usage,
                mapped_at_creation: false,
            })
        };
        let resolve = buffer(wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC);
        let read = buffer(wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST);
        Clock::Timestamps { set, resolve, read, period_ns: gpu.queue.get_timestamp_period() as f64 }
    }

    fn name(&self) -> &'static str {
        match self {
            Clock::Timestamps { .. } => "timestamp queries",
            Clock::Wall => "wall time around submit and wait",
        }
    }

    /// Milliseconds one recording takes on the GPU.
    fn time(&self, gpu: &GpuContext, record: &mut Record) -> f64 {
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        match self {
            Clock::Timestamps { set, resolve, read, period_ns } => {
                let writes = wgpu::ComputePassTimestampWrites {
                    query_set: set,
                    beginning_of_pass_write_index: Some(0),
                    end_of_pass_write_index: Some(1),
                };
                record(&mut encoder, Some(writes));
                encoder.resolve_query_set(set, 0..2, resolve, 0);
                encoder.copy_buffer_to_buffer(resolve, 0, read, 0, 16);
                gpu.queue.submit([encoder.finish()]);
                let (sender, receiver) = std::sync::mpsc::channel();
                read.map_async(wgpu::MapMode::Read, .., move |r| sender.send(r).unwrap());
                gpu.device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
                receiver.recv().unwrap().unwrap();
                let ticks: [u64; 2] = bytemuck::pod_read_unaligned(&read.get_mapped_range(..).unwrap());
                read.unmap();
                ticks[1].saturating_sub(ticks[0]) as f64 * period_ns / 1e6
            }
            Clock::Wall => {
                record(&mut encoder, None);
                let start = Instant::now();
                gpu.queue.submit([encoder.finish()]);
                gpu.device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
                start.elapsed().as_secs_f64() * 1e3
            }
        }
    }

    /// (median, min, max) in ms over `reps` timed runs after 3 warm-up runs.
    fn stats(&self, gpu: &GpuContext, reps: usize, record: &mut Record) -> Stats {
        Stats::of(self.interleaved(gpu, reps, &mut [record]).remove(0))
    }

    /// Times of `reps` runs of each recording, taken in turn (one run of each, then the next
    /// round) after 3 warm-up rounds, so that a machine whose speed drifts (a shared VM) moves
    /// them all alike and their ratios within a round hold.
    fn interleaved(&self, gpu: &GpuContext, reps: usize, records: &mut [&mut Record]) -> Vec<Vec<f64>> {
        let mut times = vec![Vec::with_capacity(reps); records.len()];
        for round in 0..3 + reps {
            for (record, times) in records.iter_mut().zip(&mut times) {
                let ms = self.time(gpu, *record);
                if round >= 3 {
                    times.push(ms);
                }
            }
        }
        times
    }
}

/// What every row of one workload shares, and how its paths are timed.
struct Context<'a> {
    gpu: &'a GpuContext,
    info: &'a wgpu::AdapterInfo,
    clock: &'a Clock,
    /// Timed runs of each path.
    reps: usize,
    workload: &'a Workload,
    copy_kernel: &'a CopyKernel,
    /// The copy kernel's GB/s (its median run, timed before the methods).
    copy_gbps: f64,
}

impl Context<'_> {
    fn setting(&self) -> Setting<'_> {
        Setting {
            adapter: self.info,
            clock: self.clock.name(),
            layout_name: &self.workload.name,
            layout: &self.workload.layout,
            copy_bytes: self.copy_kernel.bytes,
            copy_gbps: self.copy_gbps,
        }
    }
}

impl Row {
    /// The row as a line of the table `run` prints (`-` where there is no value).
    fn line(&self) -> String {
        let opt = |v: Option<f64>, digits: usize| {
            v.filter(|v| v.is_finite()).map_or("-".to_string(), |v| format!("{v:.digits$}"))
        };
        format!(
            "{:<18} {:>10} {:<17} {:<8} {:>5} {:>6} {:>9.3} {:>9.3} {:>9.3} {:>8.3} {:>8.2} {:>6.2} {:>9} {:>6} {:>9} {:>9}",
            self.layout,
            self.elements,
            self.method,
            self.path,
            self.dispatches,
            opt(Some(self.pool_ratio), 2),
            self.stats.median_ms,
            self.stats.min_ms,
            self.stats.max_ms,
            self.elements_per_s / 1e9,
            self.gbps,
            self.roofline_fraction,
            opt(Some(self.unfused_median_ms), 3),
            opt(Some(self.fused_speedup), 2),
            opt(self.cpu_f32_threads_ms, 3),
            opt(self.cpu_f64_reference_ms, 3)
        )
    }
}

/// The rows of a step's paths (the pool first), each timed in turn with the copy kernel, round
/// by round, under the name `method`; `baseline` where the method has the unfused and host ones.
fn path_rows(
    context: &Context,
    method: &'static str,
    config: &Config,
    paths: &mut [(&'static str, BloopState, bloop::StepBindings)],
    baseline: Option<Baseline>,
) -> Vec<Row> {
    // The recordings borrow the paths only while they are timed.
    let mut times = {
        let copy_kernel = context.copy_kernel;
        let mut records: Vec<Box<Record>> =
            vec![Box::new(|encoder: &mut wgpu::CommandEncoder, t| copy_kernel.record(encoder, t))];
        records.extend(paths.iter_mut().map(|(_, state, bindings)| {
            Box::new(move |encoder: &mut wgpu::CommandEncoder, t: Option<wgpu::ComputePassTimestampWrites>| {
                state.record_step_timed(encoder, bindings, t).unwrap()
            }) as Box<Record>
        }));
        let mut records: Vec<&mut Record> = records.iter_mut().map(|r| &mut **r).collect();
        context.clock.interleaved(context.gpu, context.reps, &mut records)
    };
    let copy_times = times.remove(0);
    paths
        .iter()
        .zip(&times)
        .map(|((path, _, bindings), path_times)| {
            let timed = Timed {
                path,
                times: path_times,
                pool_times: &times[0],
                copy_times: &copy_times,
                dispatches: bindings.dispatch_count(),
            };
            Row::new(&context.setting(), method, config, &timed, baseline)
        })
        .collect()
}

/// (name, method, ratio_only, guard, gradient and output type, averages' type). The guard is
/// on by default; the unguarded rows measure what it costs, the 16-bit rows what halving the
/// bytes buys.
const METHODS: [(&str, Method, bool, bool, DType, DType); 13] = [
    ("bloop", Method::Bloop, false, true, DType::F32, DType::F32),
    ("dynamic_barrier", Method::DynamicBarrier, false, true, DType::F32, DType::F32),
    ("pcgrad", Method::PcGrad, false, true, DType::F32, DType::F32),
    ("mixed", Method::Mixed, false, true, DType::F32, DType::F32),
    ("bloop_ratio_only", Method::Bloop, true, true, DType::F32, DType::F32),
    ("bloop_unguarded", Method::Bloop, false, false, DType::F32, DType::F32),
    ("mixed_unguarded", Method::Mixed, false, false, DType::F32, DType::F32),
    ("bloop_ratio_only_unguarded", Method::Bloop, true, false, DType::F32, DType::F32),
    ("bloop_f16", Method::Bloop, false, true, DType::F16, DType::F16),
    ("bloop_f16_f32ema", Method::Bloop, false, true, DType::F16, DType::F32),
    ("bloop_bf16", Method::Bloop, false, true, DType::Bf16, DType::Bf16),
    ("mixed_f16", Method::Mixed, false, true, DType::F16, DType::F16),
    ("mixed_bf16", Method::Mixed, false, true, DType::Bf16, DType::Bf16),
];

/// Rows `--quick` keeps: the f32 methods with the guard, unguarded bloop and all-f16 bloop.
fn in_quick(name: &str) -> bool {
    !name.contains('_') || ["bloop_ratio_only", "dynamic_barrier", "bloop_unguarded", "bloop_f16"].contains(&name)
}

fn uniform(rng: &mut SplitMix64, n: u64) -> Vec<f32> {
    (0..n).map(|_| (rng.next_f64() * 2.0 - 1.0) as f32).collect()
}

fn fill(gpu: &GpuContext, leaves: &[LeafBuffer], rng: &mut SplitMix64) {
    for leaf in leaves {
        let mut bytes = leaf.dtype.encode(&uniform(rng, leaf.len));
        bytes.resize(bytes.len().next_multiple_of(4), 0);
        gpu.queue.write_buffer(&leaf.buffer, leaf.offset, &bytes);
    }
}

/// The leaves of every role somewhere in the user's own buffers.
struct Arrangement {
    name: &'static str,
    main: Vec<LeafBuffer>,
    aux: Vec<LeafBuffer>,
    out: Vec<LeafBuffer>,
}

/// Gradient buffers of one element type: the library's pool, and the user-buffer arrangements
/// trainers have: a buffer of its own per leaf and role (always), and for the model layouts one
/// flat buffer per role with the leaves back to back, and a pooled allocator's pages.
struct Buffers {
    pool: GradientPool,
    arrangements: Vec<Arrangement>,
}

/// A pooled allocator's page size and allocation alignment (cubecl's are of this order).
const PAGE_BYTES: u64 = 8 << 20;
const PAGE_ALIGN: u64 = 256;

fn storage_buffer(gpu: &GpuContext, label: &str, size: u64) -> wgpu::Buffer {
    copy::storage_buffer(&gpu.device, label, size)
}

impl Buffers {
    fn new(gpu: &GpuContext, layout: &Layout, dtype: DType, rng: &mut SplitMix64) -> Buffers {
        let pool = GradientPool::typed(&gpu.device, layout, false, ElementTypes::gradients_and_output(dtype)).unwrap();
        fill(gpu, pool.main_leaves(), rng);
        fill(gpu, pool.aux_leaves(), rng);
        let lengths = layout.lengths();
        let per_leaf = |label: &str| -> Vec<LeafBuffer> {
            lengths
                .iter()
                .map(|&n| LeafBuffer::typed(&storage_buffer(gpu, label, n * dtype.size()), 0, n, dtype))
                .collect()
        };
        let mut arrangements =
            vec![Arrangement { name: "per-leaf", main: per_leaf("main"), aux: per_leaf("aux"), out: per_leaf("out") }];
        if lengths.len() > 1 {
            // One buffer per role, leaves back to back: element offsets that are not multiples
            // of 4 (each leaf starts on a 4-byte word only so that `fill` can write it).
            let starts: Vec<u64> = lengths
                .iter()
                .scan(0, |at, &n| {
                    let start = *at;
                    *at = (start + n * dtype.size()).next_multiple_of(4);
                    Some(start)
                })
                .collect();
            let flat = |label: &str| -> Vec<LeafBuffer> {
                let end = starts.last().copied().unwrap_or(0) + lengths.last().copied().unwrap_or(0) * dtype.size();
                let buffer = storage_buffer(gpu, label, end);
                starts.iter().zip(&lengths).map(|(&at, &n)| LeafBuffer::typed(&buffer, at, n, dtype)).collect()
            };
            arrangements.push(Arrangement { name: "flat", main: flat("main"), aux: flat("aux"), out: flat("out") });
            // A pooled allocator: each leaf's main, aux and output allocated one after the
            // other on shared pages, aligned, so inputs and outputs share buffers.
            let (mut main, mut aux, mut out) = (Vec::new(), Vec::new(), Vec::new());
            let mut page: Option<(wgpu::Buffer, u64)> = None;
            for &n in &lengths {
                let bytes = (n * dtype.size()).next_multiple_of(PAGE_ALIGN);
                if page.as_ref().is_none_or(|(_, used)| used + 3 * bytes > PAGE_BYTES.max(3 * bytes)) {
                    page = Some((storage_buffer(gpu, "page", PAGE_BYTES.max(3 * bytes)), 0));
                }
                let (buffer, used) = page.as_mut().expect("a page was made above");
                for role in [&mut main, &mut aux, &mut out] {
                    role.push(LeafBuffer::typed(buffer, *used, n, dtype));
                    *used += bytes;
                }
            }
            arrangements.push(Arrangement { name: "pages", main, aux, out });
        }
        for a in &arrangements {
            fill(gpu, &a.main, rng);
            fill(gpu, &a.aux, rng);
        }
        Buffers { pool, arrangements }
    }
}

struct Workload {
    name: String,
    layout: Layout,
}

fn workloads(args: &Args) -> bloop::Result<Vec<Workload>> {
    let mut list: Vec<Workload> = (16..=args.max_log2)
        .step_by(2)
        .map(|k| Ok(Workload { name: format!("leaf 2^{k}"), layout: Layout::from_lengths(&[1 << k])? }))
        .collect::<bloop::Result<_>>()?;
    if args.models {
        for (name, leaves) in [("resnet50", layouts::resnet50()), ("gpt2-small", layouts::gpt2_small())] {
            let scaled = leaves.into_iter().map(|(n, len)| (n, len.div_ceil(args.layout_scale)));
            let name = if args.layout_scale == 1 { name.to_string() } else { format!("{name}/{}", args.layout_scale) };
            list.push(Workload { name, layout: Layout::new(scaled)? });
        }
    }
    Ok(list)
}

/// An arrangement's path name with its binding path's suffix (a few per run, kept for the rows).
fn path_name(name: &'static str, suffix: &str) -> &'static str {
    if suffix.is_empty() {
        return name;
    }
    Box::leak(format!("{name}{suffix}").into_boxed_str())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.layouts_json {
        Some(path) => write_layouts(path),
        None => run(Args::from(cli)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The model layouts, for the GPU peers script.
fn write_layouts(path: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let layouts = serde_json::json!({ "resnet50": layouts::resnet50(), "gpt2-small": layouts::gpt2_small() });
    std::fs::write(path, serde_json::to_string(&layouts)?)?;
    Ok(())
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let gpu = GpuContext::from_env()?;
    let clock = Clock::new(&gpu);
    let options = bloop::KernelOptions {
        max_slots: args.max_slots,
        vec4: args.vec4,
        tile_len: args.tile_len,
        ..Default::default()
    };
    let kernels = Kernels::with_options(&gpu.device, options);
    // The user-buffer arrangements' kernels, per binding path (`--binding-arrays`).
    let arrangement_kernels: Vec<(std::sync::Arc<Kernels>, &str)> = args
        .binding_arrays
        .paths()
        .iter()
        .map(|&(binding_arrays, suffix)| {
            (Kernels::with_options(&gpu.device, bloop::KernelOptions { binding_arrays, ..options }), suffix)
        })
        .collect();
    let info = gpu.adapter.get_info();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "adapter: {}; timing: {}; reduction: {}; loads: {}; tiles of {} elements; binding arrays: {}; host threads: {threads}",
        gpu.describe(),
        clock.name(),
        if kernels.uses_subgroups() { "subgroups" } else { "shared-memory tree" },
        if args.vec4 { "vec4 where aligned" } else { "scalar" },
        kernels.tile_len(),
        if kernels.has_binding_arrays() { "available" } else { "none" },
    );
    println!(
        "{:<18} {:>10} {:<17} {:<8} {:>5} {:>6} {:>9} {:>9} {:>9} {:>8} {:>8} {:>6} {:>9} {:>6} {:>9} {:>9}",
        "layout",
        "elements",
        "method",
        "path",
        "disp",
        "x pool",
        "median ms",
        "min ms",
        "max ms",
        "Gelem/s",
        "GB/s",
        "roof",
        "eager ms",
        "x",
        "cpu32 ms",
        "cpu64 ms"
    );
    let mut rows: Vec<Row> = Vec::new();
    let mut rng = SplitMix64::new(1);
    let step_workloads = if args.optimizers_only || args.leaves_only { Vec::new() } else { workloads(&args)? };
    let rows_per_workload = METHODS.iter().filter(|m| !args.quick || in_quick(m.0)).count() + hierarchy::LEVELS.len();
    let bar = ProgressBar::new((step_workloads.len() * rows_per_workload) as u64);
    bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} methods, {elapsed} elapsed, ETA {eta}")?);
    for workload in step_workloads {
        let layout = &workload.layout;
        let elements = layout.total_elements();
        let copy_kernel = CopyKernel::new(&gpu.device, elements);
        let copy =
            copy_kernel.gbps(clock.stats(&gpu, args.reps, &mut |encoder, t| copy_kernel.record(encoder, t)).median_ms);
        let context = Context {
            gpu: &gpu,
            info: &info,
            clock: &clock,
            reps: args.reps,
            workload: &workload,
            copy_kernel: &copy_kernel,
            copy_gbps: copy,
        };
        let mut buffers: Vec<(DType, Buffers)> = Vec::new();
        let host = args.cpu && elements <= 1 << 24;
        let (cpu_main, cpu_aux) =
            if host { (uniform(&mut rng, elements), uniform(&mut rng, elements)) } else { (vec![], vec![]) };

        // Baselines do not depend on the guard: measured once per method, reused by its
        // unguarded row.
        let mut baselines: Vec<(Method, bool, Baseline)> = Vec::new();
        for (name, method, ratio_only, guard, dtype, ema_dtype) in METHODS {
            if args.quick && !in_quick(name) {
                continue;
            }
            bar.inc(1);
            let types = ElementTypes { gradients: dtype, output: dtype, ema: ema_dtype };
            let config = Config::new(method).ema(0.01).lambda(0.5).ratio_only(ratio_only).guard(guard).types(types);
            if !buffers.iter().any(|(d, _)| *d == dtype) {
                buffers.push((dtype, Buffers::new(&gpu, layout, dtype, &mut rng)));
            }
            let data = &buffers.iter().find(|(d, _)| *d == dtype).unwrap().1;
            let known = baselines.iter().find(|b| b.0 == method && b.1 == ratio_only).map(|b| b.2);
            let (unfused, unfused_bytes, cpu32, cpu64) = match known {
                Some(known) => known,
                None => {
                    let (eager, _buffers) = eager::Eager::new(&gpu.device, elements, &config);
                    let unfused = clock.stats(&gpu, args.reps, &mut |encoder, t| eager.record(encoder, t));
                    let (cpu32, cpu64) = if host {
                        let mut step = cpu::CpuStep::new(cpu_main.clone(), cpu_aux.clone());
                        let reps = if elements <= 1 << 20 { 20 } else { 5 };
                        let cpu32 = Stats::of(
                            (0..reps)
                                .map(|_| {
                                    let t = Instant::now();
                                    step.step(&config, threads);
                                    t.elapsed().as_secs_f64() * 1e3
                                })
                                .collect(),
                        );
                        let widen = |v: &[f32]| vec![v.iter().map(|&x| x as f64).collect::<Vec<f64>>()];
                        let (m, a) = (widen(&cpu_main), widen(&cpu_aux));
                        let mut reference = bloop::ReferenceState::new(
                            config,
                            m.clone(),
                            if method == Method::PcGrad { a.clone() } else { vec![] },
                        );
                        let cpu64 = Stats::of(
                            (0..3)
                                .map(|_| {
                                    let t = Instant::now();
                                    std::hint::black_box(reference.step(&m, &a));
                                    t.elapsed().as_secs_f64() * 1e3
                                })
                                .collect(),
                        );
                        (Some(cpu32.median_ms), Some(cpu64.median_ms))
                    } else {
                        (None, None)
                    };
                    baselines.push((method, ratio_only, (unfused, eager.bytes_per_element, cpu32, cpu64)));
                    (unfused, eager.bytes_per_element, cpu32, cpu64)
                }
            };
            // The pool and every arrangement, timed in turn so that their ratios hold on a
            // machine whose speed drifts.
            let arrangements = data
                .arrangements
                .iter()
                .flat_map(|a| arrangement_kernels.iter().map(move |(kernels, suffix)| (Some(a), kernels, *suffix)));
            let mut paths: Vec<(&str, BloopState, bloop::StepBindings)> = std::iter::once((None, &kernels, ""))
                .chain(arrangements)
                .map(|(arrangement, kernels, suffix)| {
                    let state = BloopState::new(kernels, &gpu.queue, layout, config, EmaInits::zeros())?;
                    let (path, bindings) = match arrangement {
                        None => ("pool", state.bind_pool(&data.pool)?),
                        Some(a) => (
                            path_name(a.name, suffix),
                            state.bind_external(&ExternalGradients {
                                main: &a.main,
                                aux: &a.aux,
                                output: Output::Buffers(&a.out),
                            })?,
                        ),
                    };
                    Ok((path, state, bindings))
                })
                .collect::<bloop::Result<_>>()?;
            // The copy kernel runs in every round too, so that each path's roofline fraction is
            // a ratio of runs taken side by side.
            let baseline = Some((unfused, unfused_bytes, cpu32, cpu64));
            for row in path_rows(&context, name, &config, &mut paths, baseline) {
                // Rows go to stdout whether or not the bar is drawn (it hides itself off a terminal).
                bar.suspend(|| println!("{}", row.line()));
                rows.push(row);
            }
        }
        for (name, k) in hierarchy::LEVELS {
            bar.inc(1);
            let mut step = hierarchy::Step::new(&gpu, &kernels, layout, k, &mut rng)?;
            // No unfused or host baseline for hierarchies: those cover the two-loss methods.
            for row in path_rows(&context, name, &step.config, &mut step.paths, None) {
                bar.suspend(|| println!("{}", row.line()));
                rows.push(row);
            }
        }
        bar.suspend(|| {
            println!(
                "{:<18} {:>10} {:<17} {:<8} copy kernel: {copy:.2} GB/s",
                workload.name, elements, "(roofline)", ""
            )
        });
    }
    bar.finish_and_clear();
    if !args.optimizers_only {
        println!("many small leaves against one leaf of the same size (bloop, guard on, f32, pool, paired):");
        let timing = leaves::Timing { gpu: &gpu, info: &info, clock: &clock, reps: args.reps };
        let mut leaves_rows = Vec::new();
        for case in leaves::CASES.into_iter().filter(|&case| !args.quick || leaves::in_quick(case)) {
            let row = leaves::measure(timing, &kernels, case, &mut rng)?;
            println!("{}", row.line());
            leaves_rows.push(row);
        }
        write_json(&args.out, "leaves.json", &leaves_rows)?;
        if args.leaves_only {
            return Ok(());
        }
    }
    println!("fused optimizer against the step followed by a separate optimizer kernel (bloop, guard on, f32, pool):");
    let mut optimizer_rows = Vec::new();
    for workload in workloads(&args)? {
        for opt in optimizer::optimizers() {
            let row = optimizer::measure(&gpu, &kernels, &clock, args.reps, &workload.name, &workload.layout, opt);
            optimizer_rows.push(row);
        }
    }
    write_json(&args.out, "optimizer.json", &optimizer_rows)?;
    if args.optimizers_only {
        return Ok(());
    }
    let json = args.out.join("throughput.json");
    std::fs::write(&json, serde_json::to_string_pretty(&rows)?)?;
    let svg = args.out.join("throughput.svg");
    plot::gbps_by_size(
        &rows
            .iter()
            .map(|r| plot::Point {
                method: r.method,
                path: r.path,
                leaves: r.leaves,
                elements: r.elements,
                gbps: r.gbps,
                copy_gbps: r.copy_gbps,
            })
            .collect::<Vec<_>>(),
        &format!("{} ({:?})", info.name, info.backend),
        &svg,
    )?;
    println!("wrote {} and {}{}", json.display(), svg.display(), if args.quick { " (quick run)" } else { "" });
    Ok(())
}

/// Writes `rows` as pretty JSON to `file` in `out` (created if missing) and says where.
fn write_json(
    out: &std::path::Path,
    file: &str,
    rows: &impl serde::Serialize,
) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(out)?;
    let path = out.join(file);
    std::fs::write(&path, serde_json::to_string_pretty(rows)?)?;
    println!("wrote {}", path.display());
    Ok(())
}
