//! Replays every golden case (`*.json` in the given folders) through the public API on the GPU,
//! over the library's pool and over external buffers, and checks each against the bound.
//!
//! `cargo run --release --example conformance -- [--dtype f16|bf16] [--ema-dtype f32|f16|bf16]
//! [--packed-f16] tests/golden [MORE_DIRS...]`
//!
//! With `--dtype`, gradients and output are stored in that type and the averages in
//! `--ema-dtype` (default f32); inputs are rounded to their types and each step is judged
//! against the f64 reference on the rounded inputs, with the bound of
//! `bloop::conformance::bound`. `--packed-f16` stores f16 in u32 words even where the adapter
//! has `SHADER_F16`.

use std::path::PathBuf;
use std::process::ExitCode;

use bloop::conformance::{bound, load_cases, run_gpu_typed, run_reference, GradientPath};
use bloop::{DType, ElementTypes, GpuContext, KernelOptions, Kernels};

const USAGE: &str = "usage: conformance [--dtype f32|f16|bf16] [--ema-dtype f32|f16|bf16] [--packed-f16] DIR [DIR...]";

fn main() -> ExitCode {
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut types = ElementTypes::default();
    let mut options = KernelOptions::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut dtype = || args.next().as_deref().and_then(DType::from_name);
        match arg.as_str() {
            "--dtype" => match dtype() {
                Some(d) => (types.gradients, types.output) = (d, d),
                None => return usage(),
            },
            "--packed-f16" => options.native_f16 = false,
            "--ema-dtype" => match dtype() {
                Some(d) => types.ema = d,
                None => return usage(),
            },
            _ if arg.starts_with("--") => return usage(),
            _ => dirs.push(PathBuf::from(arg)),
        }
    }
    if dirs.is_empty() {
        return usage();
    }
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

fn usage() -> ExitCode {
    eprintln!("{USAGE}   (folders of golden-case *.json files)");
    ExitCode::from(2)
}
