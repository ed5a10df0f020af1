//! Replays every golden case (`*.json` in the given folders) through the public API on the GPU,
//! over the library's pool and over external buffers, and checks each against the bound. A
//! case some path of which the device's limits refuse (with the typed error that names the
//! limit) is reported as refused, not failed. `crates/bloop-wasm` runs the same table in
//! JavaScript hosts.
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

use bloop::conformance::{
    bound, load_cases, preamble, run_gpu_typed, run_reference, summary, CaseOutcome, Verdict, RUNNER_PATHS,
};
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
    /// Open the device with WebGPU's default limits (wgpu's `Limits::default()`: 8 storage
    /// buffers per stage, 256 invocations and 16 KiB of workgroup storage) instead of the
    /// adapter's.
    #[arg(long)]
    webgpu_limits: bool,
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
    let opened = match args.webgpu_limits {
        true => pollster::block_on(GpuContext::from_env_with_limits(|_| wgpu::Limits::default())),
        false => GpuContext::from_env(),
    };
    let gpu = match opened {
        Ok(gpu) => gpu,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let kernels = Kernels::with_options(&gpu.device, options);
    let bound = bound(types);
    for line in preamble(&gpu.describe(), types, &kernels) {
        println!("{line}");
    }
    let mut verdicts = Vec::new();
    for (path, case) in &cases {
        let outcome = CaseOutcome {
            name: path.file_stem().unwrap_or_default().to_string_lossy().into_owned(),
            runs: RUNNER_PATHS.iter().map(|&p| run_gpu_typed(&kernels, &gpu.queue, case, p, types)).collect(),
            reference: run_reference(case),
        };
        for line in outcome.lines(bound) {
            println!("{line}");
        }
        verdicts.push(outcome.verdict(bound));
    }
    println!("{}", summary(&verdicts));
    let failures = verdicts.iter().filter(|&&v| v == Verdict::Fail).count();
    // Refusals alone prove nothing: at least one case must have run.
    if failures == 0 && verdicts.contains(&Verdict::Pass) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
