//! Every golden case (computed by the paper authors' reference implementation) replayed on the
//! GPU over both gradient paths and on the CPU reference.

mod common;

use std::path::PathBuf;

use bloop::conformance::{load_cases, run_gpu, run_reference, Case, CaseReport, GradientPath, F32_BOUND};

fn cases() -> Vec<(PathBuf, bloop::conformance::Case)> {
    let cases = load_cases(&[PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")]).unwrap();
    assert_eq!(cases.len(), 24, "the shipped golden cases");
    cases
}

#[test]
fn cpu_reference_matches_every_golden_case() {
    for (path, case) in cases() {
        let report = run_reference(&case).unwrap();
        // The expected values carry 12 significant digits; f64 on exact f32 inputs is far closer.
        assert!(report.worst() < 1e-8, "{}: {report:?}", path.display());
    }
}

#[test]
fn gpu_matches_every_golden_case_through_the_pool() {
    for (path, case) in cases() {
        let report = run_gpu(&common::kernels(), &common::gpu().queue, &case, GradientPath::Pool).unwrap();
        assert!(report.passes(F32_BOUND), "{}: {report:?}", path.display());
        assert_eq!(report.main_ema.is_some(), case.method != "mixed");
        assert_eq!(report.aux_ema.is_some(), case.method == "pcgrad");
    }
}

#[test]
fn gpu_matches_every_golden_case_through_external_buffers() {
    for (path, case) in cases() {
        let report = run_gpu(&common::kernels(), &common::gpu().queue, &case, GradientPath::External).unwrap();
        assert!(report.passes(F32_BOUND), "{}: {report:?}", path.display());
    }
}

#[test]
fn gpu_matches_every_golden_case_with_the_shared_memory_reduction() {
    // Adapters without subgroups reduce through a shared-memory tree instead.
    let kernels = common::kernels_with_options(bloop::KernelOptions { subgroups: false, ..Default::default() });
    assert!(!kernels.uses_subgroups());
    // and so do the default kernels on them (SwiftShader and GL here).
    let has_subgroups = common::gpu().device.features().contains(wgpu::Features::SUBGROUP);
    assert_eq!(common::kernels().uses_subgroups(), has_subgroups);
    for (path, case) in cases() {
        for gradients in [GradientPath::Pool, GradientPath::External] {
            let report = run_gpu(&kernels, &common::gpu().queue, &case, gradients).unwrap();
            assert!(report.passes(F32_BOUND), "{} {gradients:?}: {report:?}", path.display());
        }
    }
}

#[test]
fn a_wrong_expectation_fails_the_bound() {
    // The runner must be able to fail: perturb one expected direction by 1e-4 relative.
    let (_, mut case) = cases().into_iter().find(|(_, c)| c.name == "bloop_odd_leaves").unwrap();
    for x in case.steps[1].direction.iter_mut().flatten() {
        *x *= 1.0 + 1e-4;
    }
    let report = run_gpu(&common::kernels(), &common::gpu().queue, &case, GradientPath::Pool).unwrap();
    assert!(!report.passes(F32_BOUND), "{report:?}");
    assert!(!run_reference(&case).unwrap().passes(F32_BOUND));
}

/// The cases of `tests/golden/extensions` (from an independent f64 implementation of the
/// semantics in `tests/golden/README.md`, section "Extensions") whose file names start with
/// `prefix`.
fn extension_cases(keep: impl Fn(&str) -> bool) -> Vec<(PathBuf, bloop::conformance::Case)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/extensions");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| keep(&p.file_stem().unwrap().to_string_lossy()))
        .collect();
    paths.sort();
    paths.into_iter().map(|p| (p.clone(), bloop::conformance::Case::from_file(&p).unwrap())).collect()
}

#[test]
fn project_first_matches_the_extension_cases() {
    let cases = extension_cases(|name| name.ends_with("project_first") && !name.starts_with("hierarchy"));
    assert_eq!(cases.len(), 4, "bloop, bloop ratio_only, dynamic_barrier, pcgrad");
    for (path, case) in cases {
        assert_eq!(case.config().unwrap().order, bloop::Order::ProjectFirst);
        let report = run_reference(&case).unwrap();
        assert!(report.worst() < 1e-8, "{}: {report:?}", path.display());
        for gradients in [GradientPath::Pool, GradientPath::External] {
            let report = run_gpu(&common::kernels(), &common::gpu().queue, &case, gradients).unwrap();
            assert!(report.passes(F32_BOUND), "{} {gradients:?}: {report:?}", path.display());
        }
        // The guard writes the average in the second pass for ratio_only; without it, in the
        // first: both orders of both.
        let mut unguarded = case.clone();
        unguarded.name.push_str(" unguarded");
        let report =
            bloop::conformance::run_gpu_with(&common::kernels(), &common::gpu().queue, &unguarded, |c| c.guard(false))
                .unwrap();
        assert!(report.passes(F32_BOUND), "{} unguarded: {report:?}", path.display());
        // The same case in the reference code's order does not match: the option does something.
        let mut swapped = case.clone();
        swapped.config.order = None;
        let report = run_gpu(&common::kernels(), &common::gpu().queue, &swapped, GradientPath::Pool).unwrap();
        assert!(!report.passes(F32_BOUND), "{}: update_first also passes", path.display());
    }
}

/// A hierarchy case's report where its kernels fit the device; `None` where the device has too
/// few storage buffers per stage for its levels (the typed refusal checked, the reason printed).
fn unless_too_many_levels(result: bloop::Result<CaseReport>, case: &Case, context: &str) -> Option<CaseReport> {
    let k = case.config.lambdas.as_ref().map_or(1, |l| l.len());
    let (limit, most) = (common::storage_buffer_limit(), common::hierarchy_most_storage_buffers(k));
    common::unless_too_many_storage_buffers(result, limit, most, &format!("{} ({k} levels) {context}", case.name))
}

#[test]
fn hierarchies_match_the_extension_cases() {
    let cases = extension_cases(|name| name.starts_with("hierarchy"));
    assert_eq!(cases.len(), 5);
    let tree = common::kernels_with_options(bloop::KernelOptions { subgroups: false, ..Default::default() });
    for (path, case) in cases {
        let report = run_reference(&case).unwrap();
        assert!(report.worst() < 1e-8, "{}: {report:?}", path.display());
        for gradients in [GradientPath::Pool, GradientPath::External, GradientPath::SharedBuffer] {
            for kernels in [common::kernels(), tree.clone()] {
                let report = run_gpu(&kernels, &common::gpu().queue, &case, gradients);
                let Some(report) = unless_too_many_levels(report, &case, &format!("{gradients:?}")) else { continue };
                assert!(report.passes(F32_BOUND), "{} {gradients:?}: {report:?}", path.display());
                assert!(report.main_ema.is_some() && report.aux_ema.is_none());
            }
        }
        let report =
            bloop::conformance::run_gpu_with(&common::kernels(), &common::gpu().queue, &case, |c| c.guard(false));
        if let Some(report) = unless_too_many_levels(report, &case, "unguarded") {
            assert!(report.passes(F32_BOUND), "{} unguarded: {report:?}", path.display());
        }
    }
}

#[test]
fn a_one_level_hierarchy_is_bloop() {
    // The one-level case replayed as bloop (lambda = l_1, the same inputs) meets its bound.
    let (_, case) = extension_cases(|name| name == "hierarchy_one_level").pop().unwrap();
    let mut bloop = case.clone();
    bloop.method = "bloop".into();
    bloop.config.lambda = case.config.lambdas.as_ref().unwrap()[0];
    bloop.config.lambdas = None;
    bloop.init.main_ema = case.init.emas.as_ref().unwrap()[0].clone();
    for step in &mut bloop.steps {
        let grads = step.grads.take().unwrap();
        step.grad_main = grads[0].clone();
        step.grad_aux = grads[1].clone();
        step.main_ema = step.emas.take().unwrap().remove(0);
    }
    let report = run_gpu(&common::kernels(), &common::gpu().queue, &bloop, GradientPath::Pool).unwrap();
    assert!(report.passes(F32_BOUND), "{report:?}");
}

#[test]
fn hierarchies_in_half_precision_over_every_path() {
    // Packed f16 and bf16 share words between neighbouring leaves and roles in the flat buffers.
    let packed = bloop::Kernels::with_options(
        &common::gpu().device,
        bloop::KernelOptions { native_f16: false, ..Default::default() },
    );
    for (path, case) in extension_cases(|name| name.starts_with("hierarchy")) {
        for dtype in [bloop::DType::F16, bloop::DType::Bf16] {
            for types in [bloop::ElementTypes::all(dtype), bloop::ElementTypes::gradients_and_output(dtype)] {
                for gradients in [GradientPath::Pool, GradientPath::External, GradientPath::SharedBuffer] {
                    let report =
                        bloop::conformance::run_gpu_typed(&packed, &common::gpu().queue, &case, gradients, types);
                    let context = format!("{types:?} {gradients:?}");
                    let Some(report) = unless_too_many_levels(report, &case, &context) else { continue };
                    let bound = bloop::conformance::bound(types);
                    assert!(report.passes(bound), "{} {types:?} {gradients:?}: {report:?}", path.display());
                }
            }
        }
    }
}

#[test]
fn the_runners_report_a_limit_refusal_as_refused_and_every_other_error_as_a_failure() {
    use bloop::conformance::{summary, CaseOutcome, Verdict, RUNNER_PATHS};
    // Four storage buffers per stage are fewer than any hierarchy's kernels bind.
    let limited = pollster::block_on(bloop::GpuContext::from_env_with_limits(|_| wgpu::Limits {
        max_storage_buffers_per_shader_stage: 4,
        ..wgpu::Limits::default()
    }))
    .unwrap();
    let limited_kernels = bloop::Kernels::new(&limited.device);
    let (_, case) = extension_cases(|name| name == "hierarchy_four_levels_zeros").pop().unwrap();
    let outcome = |runs| CaseOutcome { name: case.name.clone(), runs, reference: run_reference(&case) };
    let refused = outcome(RUNNER_PATHS.iter().map(|&p| run_gpu(&limited_kernels, &limited.queue, &case, p)).collect());
    assert_eq!(refused.verdict(F32_BOUND), Verdict::Refused);
    let lines = refused.lines(F32_BOUND);
    assert!(lines[0].contains(" refused ") && lines[0].ends_with("  refused"), "{lines:?}");
    assert_eq!(lines.len(), 3, "one error line per refused path: {lines:?}");
    assert!(lines[1].contains("but the device allows at most 4 (`max_storage_buffers_per_shader_stage`)"), "{lines:?}");

    let passed =
        outcome(RUNNER_PATHS.iter().map(|&p| run_gpu(&common::kernels(), &common::gpu().queue, &case, p)).collect());
    assert_eq!(passed.verdict(F32_BOUND), Verdict::Pass, "{:?}", passed.lines(F32_BOUND));
    let report = *passed.runs[0].as_ref().unwrap();
    // Any other error fails the case, and so does a result outside the bound.
    let errored = outcome(vec![Err(bloop::Error::Readback("lost".into())), Ok(report)]);
    assert_eq!(errored.verdict(F32_BOUND), Verdict::Fail);
    assert!(errored.lines(F32_BOUND)[0].ends_with("  FAIL"));
    let outside = outcome(vec![Ok(report), Ok(bloop::conformance::CaseReport { direction: 1e-3, ..report })]);
    assert_eq!(outside.verdict(F32_BOUND), Verdict::Fail);
    let mixed = outcome(vec![Ok(report), refused.runs.into_iter().next().unwrap()]);
    assert_eq!(mixed.verdict(F32_BOUND), Verdict::Refused);
    assert_eq!(
        summary(&[Verdict::Pass, Verdict::Refused, Verdict::Fail, Verdict::Pass]),
        "4 cases, 2 passed, 1 refused by the device's limits, 1 failed"
    );
    assert_eq!(summary(&[Verdict::Pass]), "1 cases, 1 passed, 0 failed");
}
