//! bloop's golden-case conformance runner for JavaScript hosts: the wasm32 build of the core on
//! wgpu's WebGPU back-end, driven by `js/node.mjs` (Dawn in Node) and `js/chromium.mjs`
//! (headless Chromium). It prints the same table as the native
//! `cargo run --release --example conformance -- tests/golden`.

mod host_calls;

use std::sync::Arc;

use bloop::conformance::{
    preamble, run_gpu_typed_async, run_reference, summary, Case, CaseOutcome, GradientPath, Verdict, RUNNER_PATHS,
};
use bloop::{DType, ElementTypes, GpuContext, KernelOptions, Kernels};
use wasm_bindgen::prelude::*;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = console, js_name = error)]
    fn console_error(message: &str);
}

/// Replays the cases (`names[i]` is the file stem of the JSON text `texts[i]`) over the pool
/// and over user buffers with gradients and output stored as `dtype` and the averages as
/// `ema_dtype` (f32, f16 or bf16; f16 packed in u32 words when `packed_f16`), handing each
/// line of the report to `print`. First checks the other async host calls (`host_calls`), a
/// failure of which counts as a failed case. Resolves to `[passed, refused, failed]`; rejects when a
/// case cannot be read or no adapter is found.
#[wasm_bindgen]
pub async fn conformance(
    names: Vec<String>,
    texts: Vec<String>,
    dtype: String,
    ema_dtype: String,
    packed_f16: bool,
    print: js_sys::Function,
) -> Result<Vec<u32>, JsError> {
    std::panic::set_hook(Box::new(|info| console_error(&info.to_string())));
    let print = |line: &str| {
        let _ = print.call1(&JsValue::NULL, &JsValue::from_str(line));
    };
    let dtype_named = |name: &str| {
        DType::from_name(name).ok_or_else(|| JsError::new(&format!("`{name}` is not one of f32, f16, bf16")))
    };
    let types =
        ElementTypes { gradients: dtype_named(&dtype)?, output: dtype_named(&dtype)?, ema: dtype_named(&ema_dtype)? };
    let cases = names
        .iter()
        .zip(&texts)
        .map(|(name, text)| Case::from_json(name, text).map(|case| (name, case)))
        .collect::<Result<Vec<_>, String>>()
        .map_err(|e| JsError::new(&e))?;
    let gpu = GpuContext::from_env_async().await.map_err(|e| JsError::new(&e.to_string()))?;
    let kernels = Kernels::with_options(&gpu.device, KernelOptions { native_f16: !packed_f16, ..Default::default() });
    let bound = bloop::conformance::bound(types);
    let mut lines = preamble(&gpu.describe(), types, &kernels);
    lines.insert(1, format!("limits: {}", limits(&gpu.device.limits())));
    lines.insert(
        2,
        format!(
            "kernels: {} reduction, {}",
            if kernels.uses_subgroups() { "subgroup" } else { "shared-memory" },
            if gpu.device.features().contains(wgpu::Features::SHADER_F16) { "shader-f16" } else { "no shader-f16" }
        ),
    );
    let header = lines.pop().unwrap_or_default();
    for line in lines {
        print(&line);
    }
    let mut verdicts = Vec::new();
    match host_calls::check(&gpu, &kernels).await {
        Ok(what) => print(&format!("async host calls: ok ({what})")),
        Err(why) => {
            print(&format!("async host calls: FAIL: {why}"));
            verdicts.push(Verdict::Fail);
        }
    }
    print(&header);
    for (name, case) in &cases {
        let mut runs = Vec::new();
        for &path in &RUNNER_PATHS {
            runs.push(run_in_scopes(&kernels, &gpu.queue, case, path, types).await);
        }
        let outcome = CaseOutcome { name: name.to_string(), runs, reference: run_reference(case) };
        for line in outcome.lines(bound) {
            print(&line);
        }
        verdicts.push(outcome.verdict(bound));
    }
    print(&summary(&verdicts));
    let count = |v: Verdict| verdicts.iter().filter(|&&x| x == v).count() as u32;
    Ok(vec![count(Verdict::Pass), count(Verdict::Refused), count(Verdict::Fail)])
}

/// Runs one case inside validation and out-of-memory scopes that are awaited: on WebGPU the
/// library's own scopes cannot wait for their results, so whatever the device reports about
/// the case lands here and fails it, instead of being lost or ending the module.
async fn run_in_scopes(
    kernels: &Arc<Kernels>,
    queue: &wgpu::Queue,
    case: &Case,
    path: GradientPath,
    types: ElementTypes,
) -> bloop::Result<bloop::conformance::CaseReport> {
    let device = kernels.device();
    let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let report = run_gpu_typed_async(kernels, queue, case, path, types).await;
    let reported = validation.pop().await.or(oom.pop().await);
    match reported {
        Some(error) => Err(bloop::Error::Gpu { during: "running the case", message: error.to_string() }),
        None => report,
    }
}

/// The limits the kernels meet, as the device has them.
fn limits(limits: &wgpu::Limits) -> String {
    format!(
        "{} storage buffers per stage, {} invocations per workgroup, {} KiB workgroup storage, \
         {} MiB per binding, {} MiB per buffer",
        limits.max_storage_buffers_per_shader_stage,
        limits.max_compute_invocations_per_workgroup,
        limits.max_compute_workgroup_storage_size / 1024,
        limits.max_storage_buffer_binding_size >> 20,
        limits.max_buffer_size >> 20
    )
}
