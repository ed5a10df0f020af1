//! Replays every golden case (`*.json` in the given folders) through the public API on the GPU,
//! over the library's pool and over external buffers, and checks each against the bound.
//!
//! `cargo run --release --example conformance -- tests/golden [MORE_DIRS...]`

use std::path::PathBuf;
use std::process::ExitCode;

use bloop::conformance::{load_cases, run_gpu, run_reference, GradientPath, F32_BOUND};
use bloop::{GpuContext, Kernels};

fn main() -> ExitCode {
    let dirs: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    if dirs.is_empty() {
        eprintln!("usage: conformance DIR [DIR...]   (folders of golden-case *.json files)");
        return ExitCode::from(2);
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
    let kernels = Kernels::new(&gpu.device);
    println!("adapter: {}", gpu.describe());
    println!("bound: relative error <= {F32_BOUND:e} on every step (f32)");
    println!("{:<36} {:>11} {:>11} {:>11}  result", "case", "pool", "external", "cpu ref");
    let mut failures = 0;
    for (path, case) in &cases {
        let name = path.file_stem().unwrap_or_default().to_string_lossy();
        let runs = [GradientPath::Pool, GradientPath::External].map(|p| run_gpu(&kernels, &gpu.queue, case, p));
        let reference = run_reference(case);
        let cell = |r: &Result<bloop::conformance::CaseReport, String>| match r {
            Ok(r) if r.corrupted_guards > 0 => format!("{} GUARDS", r.corrupted_guards),
            Ok(r) => format!("{:.3e}", r.worst()),
            Err(_) => "error".to_string(),
        };
        let runs: Vec<_> = runs.into_iter().map(|r| r.map_err(|e| e.to_string())).collect();
        let pass = runs.iter().chain([&reference]).all(|r| r.as_ref().is_ok_and(|r| r.passes(F32_BOUND)));
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
