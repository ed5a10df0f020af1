//! Replays every golden case (`*.json` in the given folders) through the public API on the GPU,
//! over the library's pool and over external buffers, and checks each against the bound.
//!
//! `cargo run --release --example conformance -- tests/golden [MORE_DIRS...]`; `--help` lists the
//! options.
//!
//! With `--dtype`, gradients and output are stored in that type and the averages in
//! `--ema-dtype` (default f32); inputs are rounded to their types and each step is judged
//! against the f64 reference on the rounded inputs, with the bound of
//! `bloop::conformance::bound`. `--packed-f16` stores f16 in u32 words even where the adapter
//! has `SHADER_F16`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use bloop::conformance::{bound, load_cases, run_gpu_typed, run_reference, GradientPath};
use bloop::{DType, ElementTypes, GpuContext, KernelOptions, Kernels};

/// Replays golden cases (`*.json` in the given folders) on the GPU, over the library's pool and
/// over external buffers, and checks each step against the bound.
#[derive(clap::Parser)]
struct Args {
    /// Element type of gradients and output.
    #[arg(long, default_value = "f32", value_parser = parse_dtype)]
    dtype: DType,
    /// Element type of the averages.
    #[arg(long, default_value = "f32", value_parser = parse_dtype)]
    ema_dtype: DType,
    /// Store f16 in u32 words even where the adapter has `SHADER_F16`.
    #[arg(long)]
    packed_f16: bool,
    /// Folders of golden-case `*.json` files.
    #[arg(required = true)]
    dirs: Vec<PathBuf>,
}

fn parse_dtype(name: &str) -> Result<DType, String> {
    DType::from_name(name).ok_or_else(|| format!("`{name}` is not one of f32, f16, bf16"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let dirs = args.dirs;
    let types = ElementTypes { gradients: args.dtype, output: args.dtype, ema: args.ema_dtype };
    let options = KernelOptions { native_f16: !args.packed_f16, ..KernelOptions::default() };
    let cases = match load_cases(&dirs) {
        Ok(cases) if cases.is_empty() => {
            eprintln!("no *.json cases in {dirs:?}");
            return ExitCode::from(2);
        }
        Ok(cases) => cases,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let gpu = match GpuContext::from_env() {
        Ok(gpu) => gpu,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let kernels = Kernels::with_options(&gpu.device, options);
    let bound = bound(types);
    println!("adapter: {}", gpu.describe());
    let limits = gpu.device.limits();
    println!(
        "limits: {} storage buffers per stage, {} invocations per workgroup, {} KiB workgroup storage, \
         {} MiB binding, f16 {}",
        limits.max_storage_buffers_per_shader_stage,
        limits.max_compute_invocations_per_workgroup,
        limits.max_compute_workgroup_storage_size / 1024,
        limits.max_storage_buffer_binding_size >> 20,
        if gpu.device.features().contains(wgpu::Features::SHADER_F16) { "yes" } else { "no" }
    );
    println!(
        "storage: gradients {}, output {}, averages {}{}",
        types.gradients,
        types.output,
        types.ema,
        if types.gradients == DType::F16 {
            if kernels.uses_native_f16() {
                " (f16 arrays)"
            } else {
                " (f16 packed in u32)"
            }
        } else {
            ""
        }
    );
    println!("bound: relative error <= {bound:e} on every step");
    println!("{:<36} {:>11} {:>11} {:>11}  result", "case", "pool", "external", "cpu ref");
    let mut failures = 0;
    for (path, case) in &cases {
        let name = path.file_stem().unwrap_or_default().to_string_lossy();
        let runs =
            [GradientPath::Pool, GradientPath::External].map(|p| run_gpu_typed(&kernels, &gpu.queue, case, p, types));
        let reference = run_reference(case);
        let cell = |r: &Result<bloop::conformance::CaseReport, String>| match r {
            Ok(r) if r.corrupted_guards > 0 => format!("{} GUARDS", r.corrupted_guards),
            Ok(r) => format!("{:.3e}", r.worst()),
            Err(_) => "error".to_string(),
        };
        let runs: Vec<_> = runs.into_iter().map(|r| r.map_err(|e| e.to_string())).collect();
        let pass = runs.iter().all(|r| r.as_ref().is_ok_and(|r| r.passes(bound)))
            && reference.as_ref().is_ok_and(|r| r.passes(bloop::conformance::F32_BOUND));
        failures += usize::from(!pass);
        println!(
            "{:<36} {:>11} {:>11} {:>11}  {}",
            name,
            cell(&runs[0]),
            cell(&runs[1]),
            cell(&reference),
            if pass { "ok" } else { "FAIL" }
        );
        for e in runs.iter().chain([&reference]).filter_map(|r| r.as_ref().err()) {
            println!("    error: {e}");
        }
    }
    println!("{} cases, {} passed, {} failed", cases.len(), cases.len() - failures, failures);
    if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
