//! Every shader variant the library can build, translated with naga (the compiler inside
//! wgpu) to SPIR-V (Vulkan), MSL (Metal) and HLSL (DX12), so a shader that would break on a
//! backend this machine lacks fails here.

use bloop::shaders::{Axes, Stage, Storage, Variant};

fn validated(source: &str, what: &str, variant: &Variant) -> (naga::Module, naga::valid::ModuleInfo) {
    use naga::valid::{Capabilities, SubgroupOperationSet, Validator};
    let module =
        naga::front::wgsl::parse_str(source).unwrap_or_else(|e| panic!("{what}: {}", e.emit_to_string(source)));
    // Each variant may use only what its device features grant: subgroup operations, f16
    // arrays (SHADER_F16), f16 packing (wgpu grants it with SHADER_F16_IN_F32).
    let (mut capabilities, operations) = if variant.subgroups {
        (Capabilities::SUBGROUP, SubgroupOperationSet::BASIC | SubgroupOperationSet::ARITHMETIC)
    } else {
        (Capabilities::empty(), SubgroupOperationSet::empty())
    };
    let s = variant.storages;
    let opt = variant.optimizer.map_or(vec![], |o| vec![o.params, o.state]);
    let uses = |storage| [s.gradients, s.output, s.ema].contains(&storage) || opt.contains(&storage);
    if uses(Storage::F16) {
        capabilities |= Capabilities::SHADER_FLOAT16;
    }
    if uses(Storage::PackedF16) {
        capabilities |= Capabilities::SHADER_FLOAT16_IN_FLOAT32;
    }
    let info = Validator::new(naga::valid::ValidationFlags::all(), capabilities)
        .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
        .subgroup_operations(operations)
        .validate(&module)
        .unwrap_or_else(|e| panic!("{what}: {}", e.emit_to_string(source)));
    (module, info)
}

fn each_stage(mut check: impl FnMut(&str, &naga::Module, &naga::valid::ModuleInfo)) -> usize {
    let mut count = 0;
    for variant in Variant::all() {
        for &stage in variant.stages() {
            let what = format!("{variant:?} {stage:?}");
            let (module, info) = validated(&variant.source(stage), &what, &variant);
            assert_eq!(module.entry_points.len(), 1, "{what}");
            assert_eq!(module.entry_points[0].name, stage.name(), "{what}");
            check(&what, &module, &info);
            count += 1;
        }
    }
    count
}

#[test]
fn every_variant_translates_to_spirv() {
    let count = each_stage(|what, module, info| {
        let words = naga::back::spv::write_vec(module, info, &Default::default(), None)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(words[0], 0x0723_0203, "{what}: SPIR-V magic number");
    });
    // f32: per kind, with read-only and writable inputs and with and without subgroups (x4),
    // and for (no guard, no sums), (sums for diagnostics), (guard): 3 stages x 3 for each of
    // the three reducing kinds, 1 + 2 + 3 for mixing. 16-bit: read-only and writable inputs,
    // three 16-bit storages, four role mixes (x24), guard off and on: 3 x 2 x 3 stages for the
    // reducing kinds, 1 + 3 for mixing.
    // Optimizers (SGD, momentum, Adam), each: projecting and PCGrad kernels with guard off and
    // on, direction written or not, both reductions (16 variants x 3 stages); mixing likewise
    // (4 x 2 stages without the guard, 4 x 3 with its accumulate stage); writable inputs and
    // ratio_only (2 x 3); ratio_only without the guard and mixing with diagnostics only (2 x 3);
    // three 16-bit storages in three mixes of params and state (9 x 3).
    // Project first: the three kinds with averages, read-only and writable inputs, with and
    // without subgroups, guard off and on (3 stages each), and f16 and bf16 storage.
    // Hierarchies of 1, 2, 3, 4 and 8 aux losses: f32 with read-only and writable inputs, with
    // and without subgroups, guard off and on, both orders (16 x 3 stages), and 16-bit
    // storage (3 kinds x 2 role mixes, 3 stages).
    // Slots: 8 two-loss variants (3 stages each), mixing without sums (1), 3 more plain ones, 4
    // with optimizers and 3 hierarchies (3 stages each).
    // Vector loads: projecting and ratio_only (3 stages each) in 22 variants each (read-only
    // and writable inputs, both reductions: three guard and sums settings, and the paper's
    // order with the guard off and on; 4 and 16 slots); mixing in 14 (the same but the
    // paper's order: 1 stage without sums, 2 with, 3 with the guard); and each of the three
    // with each fused f32 optimizer, the direction written or not (18 variants, 3 stages).
    // Levels as planes of one buffer: hierarchies of 1, 2, 3, 4 and 8 aux losses in 13
    // variants each (both guard settings in both orders, writable inputs, averages alone as
    // planes, 4 slots, and three 16-bit storages with read-only and writable inputs), 3 stages;
    // and the two-loss computations with levels as planes, as a pool binds them, or the averages
    // alone, as user buffers do: read-only and writable inputs and each guard and sums setting
    // (3 stages each for the reducing kinds, 1 + 2 + 3 for mixing).
    assert_eq!(
        count,
        4 * (3 * 9 + 6)
            + 24 * (18 + 4)
            + 3 * (48 + 20 + 6 + 6 + 27)
            + 3 * (8 * 3 + 2 * 3)
            + 5 * (16 * 3 + 6 * 3)
            + (8 * 3 + 1 + 3 * 3 + 4 * 3 + 3 * 3)
            + (2 * 22 * 3 + (4 * (1 + 2 + 3) + 3 + 3))
            + 3 * 3 * 2 * 3
            + 5 * 13 * 3
            + 2 * 2 * (3 * 3 * 3 + (1 + 2 + 3))
    );
}

#[test]
fn every_variant_translates_to_msl() {
    each_stage(|what, module, info| {
        // simd_sum needs MSL 2.1; wgpu's Metal backend targets newer versions anyway.
        let options = naga::back::msl::Options { lang_version: (2, 1), ..Default::default() };
        let (msl, _) = naga::back::msl::write_string(module, info, &options, &Default::default())
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(msl.contains("kernel void"), "{what}");
    });
}

#[test]
fn every_variant_translates_to_hlsl() {
    each_stage(|what, module, info| {
        // Wave intrinsics need shader model 6.0, which wgpu's DX12 backend requires anyway.
        let options =
            naga::back::hlsl::Options { shader_model: naga::back::hlsl::ShaderModel::V6_0, ..Default::default() };
        let mut hlsl = String::new();
        naga::back::hlsl::Writer::new(&mut hlsl, &options, &Default::default())
            .write(module, info, None)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(hlsl.contains("[numthreads(256, 1, 1)]"), "{what}");
    });
}

#[test]
fn a_broken_shader_is_rejected() {
    // The checks above must be able to fail: a typo in an otherwise valid stage.
    let source = Variant::all()[0].source(Stage::Apply);
    let broken = source.replace("x.e = ema_step(e_old", "x.e = ema_stepp(e_old");
    assert_ne!(source, broken);
    assert!(naga::front::wgsl::parse_str(&broken).is_err());
}

#[test]
fn preprocessor_selects_branches() {
    let all = Variant::all();
    let pcgrad =
        all.iter().find(|v| v.kind == bloop::shaders::Kind::PcGrad && !v.inputs_writable && !v.subgroups).unwrap();
    let mixed = all.iter().find(|v| v.kind == bloop::shaders::Kind::Mixed && v.inputs_writable).unwrap();
    let with_subgroups = all.iter().find(|v| v.kind == bloop::shaders::Kind::PcGrad && v.subgroups).unwrap();
    assert!(with_subgroups.source(Stage::Accumulate).contains("subgroupAdd"));
    assert!(!pcgrad.source(Stage::Accumulate).contains("subgroupAdd"));
    let p = pcgrad.source(Stage::Apply);
    assert!(p.contains("store_aux_ema(seg.aux_ema + i, x.a);") && !p.contains("read_write> g_main"));
    let m = mixed.source(Stage::Apply);
    assert!(!m.contains("read_write> main_ema") && m.contains("read_write> g_main"));
    assert!(!p.contains('#') && !m.contains('#'), "no directive survives");
    // An optimizer that discards the direction binds no output and never stores one; with the
    // guard, mixing skips in apply (after an accumulate stage) instead of clearing afterwards.
    let fused = all
        .iter()
        .find(|v| v.kind == bloop::shaders::Kind::Mixed && v.guard && !v.write_out && v.optimizer.is_some())
        .unwrap();
    assert_eq!(fused.stages(), &[Stage::Accumulate, Stage::Finalize, Stage::Apply]);
    let f = fused.source(Stage::Apply);
    assert!(!f.contains("store_out") && f.contains("store_weights(") && f.contains("scalars.skip != 0u"));
    assert!(fused.source(Stage::Finalize).contains("schedule.step += 1u - skip"));
}

#[test]
fn every_sharded_finalize_translates_to_every_backend() {
    // The sharded step's finalize module: this rank's totals (`finalize`) and `decide_global`.
    let mut count = 0;
    // A hierarchy is not sharded (refused when the sharded state is made).
    let shardable: Vec<Variant> =
        Variant::all().into_iter().filter(|v| !matches!(v.kind, bloop::shaders::Kind::Hierarchy(_))).collect();
    for variant in shardable.iter().copied().filter(|v| v.stages().contains(&Stage::Finalize)) {
        let what = format!("{variant:?} sharded finalize");
        let source = variant.sharded_finalize_source();
        assert!(!source.contains('#') && !source.contains("ratio_main = ratio(dots_total"), "{what}");
        let (module, info) = validated(&source, &what, &variant);
        let names: Vec<&str> = module.entry_points.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["finalize", "decide_global"], "{what}");
        naga::back::spv::write_vec(&module, &info, &Default::default(), None).unwrap_or_else(|e| panic!("{what}: {e}"));
        let msl = naga::back::msl::Options { lang_version: (2, 1), ..Default::default() };
        naga::back::msl::write_string(&module, &info, &msl, &Default::default())
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let hlsl =
            naga::back::hlsl::Options { shader_model: naga::back::hlsl::ShaderModel::V6_0, ..Default::default() };
        let mut out = String::new();
        naga::back::hlsl::Writer::new(&mut out, &hlsl, &Default::default())
            .write(&module, &info, None)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        count += 1;
    }
    // Every variant but mixing without sums has a finalize stage: all but 4 f32 and 24 16-bit
    // ones, one with slots, 4 with vector loads and 4 with levels as planes.
    assert_eq!(count, shardable.len() - 4 - 24 - 1 - 4 - 4);
}

#[test]
fn project_first_projects_on_the_loaded_average() {
    let all = Variant::all();
    for kind in [bloop::shaders::Kind::Project, bloop::shaders::Kind::PcGrad] {
        let first = all.iter().find(|v| v.kind == kind && v.project_first).unwrap();
        let apply = first.source(Stage::Apply);
        assert!(apply.contains("let pe = e_old;") && !apply.contains("let pe = x.e;"), "{kind:?}");
        let accumulate = first.source(Stage::Accumulate);
        assert!(accumulate.contains("let e = e_old;"), "{kind:?}");
        let update = all.iter().find(|v| v.kind == kind && !v.project_first).unwrap();
        assert!(update.source(Stage::Apply).contains("let pe = x.e;"), "{kind:?}");
    }
}

#[test]
fn hierarchy_stages_are_unrolled_per_level() {
    let all = Variant::all();
    for k in [1u8, 2, 4, 8] {
        let v = all.iter().find(|v| v.kind == bloop::shaders::Kind::Hierarchy(k) && v.project_first).unwrap();
        let accumulate = v.source(Stage::Accumulate);
        assert!(accumulate.contains(&format!("const LEVELS: u32 = {k}u;")), "k = {k}");
        assert!(accumulate.contains(&format!("let e{} = e{}_old;", k - 1, k - 1)), "k = {k}: project first");
        assert!(accumulate.contains(&format!("let g{k} = load_g{k}(")) && !accumulate.contains('#'), "k = {k}");
        let apply = v.source(Stage::Apply);
        assert!(apply.contains(&format!("store_e{}(", k - 1)), "k = {k}");
    }
}

#[test]
fn slots_copy_the_segment_loop() {
    // Each slot's segment loop reads its own bindings, without a branch between slots; slot
    // 0's names are those of a one-slot variant.
    let all = Variant::all();
    let adam =
        all.iter().find(|v| v.slots == 4 && v.optimizer.is_some() && v.storages.gradients == Storage::F32).unwrap();
    let apply = adam.source(Stage::Apply);
    assert!(!apply.contains('#'), "no directive survives");
    // The skip loop and the main loop, once per slot, each over that slot's segments.
    assert_eq!(apply.matches("let walk = slot_walk(tile, ").count(), 8);
    assert!(apply.contains("slot_walk(tile, 3u)") && !apply.contains("switch"));
    for s in 1..4 {
        assert!(apply.contains(&format!("fn element_s{s}(")) && apply.contains(&format!("fn optimize_s{s}(")));
        assert!(apply.contains(&format!("load_g_main_s{s}(seg.main + i)")));
        assert!(apply.contains(&format!("store_weights_s{s}(seg.weights + i")));
        assert!(apply.contains(&format!("@binding({}) var<storage, read> g_aux_s{s}", 2 + 32 * s)));
    }
    // The state's own roles stay single.
    assert!(!apply.contains("opt_m_s1") && !apply.contains("main_ema_s1") && !apply.contains("element_s4"));
    let k8 = all.iter().find(|v| v.kind == bloop::shaders::Kind::Hierarchy(8) && v.slots == 16).unwrap();
    let accumulate = k8.source(Stage::Accumulate);
    assert!(accumulate.contains("slot_walk(tile, 15u)") && accumulate.contains("fn accumulate_element_s15("));
    assert!(accumulate.contains("load_g8_s15(") && !accumulate.contains("load_e0_s1"));
    let one = all.iter().find(|v| v.slots == 1 && v.kind == bloop::shaders::Kind::Project).unwrap();
    assert!(
        one.source(Stage::Apply).contains("const SLOTS: u32 = 1u;")
            && !one.source(Stage::Apply).contains("fn load_g_main_s1")
    );
}

/// The text of `fn name(` up to its closing brace in `source`.
fn function_text(source: &str, name: &str) -> String {
    let start = source.find(&format!("fn {name}(")).unwrap_or_else(|| panic!("no fn {name}"));
    let end = start + source[start..].find("\n}\n").unwrap();
    source[start..end].to_string()
}

/// A scalar element function as its vec4 form must read: vec4 types, the vec4 loads, stores
/// and helpers, and the `4` names of the per-slot functions (`name` with slot suffix `s`).
fn widened(scalar: &str, name: &str, s: &str) -> String {
    let mut text = scalar
        .replace("f32(0.0)", "vec4<f32>(0.0)")
        .replace("d: f32", "d: vec4<f32>")
        .replace("Element", "Element4")
        .replace("load_", "load4_")
        .replace("store_", "store4_")
        .replace("store4_element", "store_element4");
    for helper in ["ema_step", "mul_sum", "gradient_sums"] {
        text = text.replace(&format!("{helper}("), &format!("{helper}4("));
    }
    for function in [name, "optimize"] {
        text = text.replace(&format!("{function}{s}("), &format!("{function}4{s}("));
    }
    text
}

#[test]
fn the_vector_form_of_each_element_function_is_the_scalar_one_four_wide() {
    // One source writes both widths: in a variant with vector loads, every function of the
    // element code exists in both forms, per slot, and the vec4 one is the scalar one with
    // vec4 types and the vec4 loads, stores and helpers; a variant without them has no vec4
    // form at all.
    let all = Variant::all();
    let adam = all
        .iter()
        .find(|v| v.vec4 && v.slots == 4 && v.optimizer.is_some_and(|o| o.kind == bloop::OptKind::Adam))
        .unwrap();
    let source = adam.source(Stage::Apply);
    for s in ["", "_s1", "_s3"] {
        for name in ["element", "optimize", "store_element"] {
            let scalar = function_text(&source, &format!("{name}{s}"));
            let expected = widened(&scalar, name, s);
            assert!(expected.contains("vec4<f32>") || expected.contains("load4_") || expected.contains("store4_"));
            assert_eq!(function_text(&source, &format!("{name}4{s}")), expected, "{name}{s}");
        }
    }
    assert!(source.contains("struct Element4 {\n    gm: vec4<f32>,"));
    // The accumulate stage's terms, with the averages, the guard's sums and the EMA written.
    let guarded = all.iter().find(|v| v.vec4 && v.guard && v.kind == bloop::shaders::Kind::Project).unwrap();
    let source = guarded.source(Stage::Accumulate);
    let scalar = function_text(&source, "add_terms");
    assert!(scalar.contains("mul_sum(e, ga)") && scalar.contains("gradient_sums(gm, ga)"));
    assert_eq!(function_text(&source, "add_terms4"), widened(&scalar, "add_terms", ""));
    let scalar_only = all.iter().find(|v| !v.vec4 && v.slots == 4 && v.optimizer.is_some()).unwrap();
    let source = scalar_only.source(Stage::Apply);
    assert!(source.contains("fn element(") && !source.contains("fn element4") && !source.contains("struct Element4"));
}

#[test]
fn every_list_is_a_part_of_the_table() {
    let table = Axes::table();
    assert!(table.contains(Variant::PLAIN) && Axes::plain().variants().eq([Variant::PLAIN]));
    let lists = [
        ("all", Variant::all()),
        ("with_optimizers", Variant::with_optimizers()),
        ("with_slots", Variant::with_slots()),
        ("with_vec4", Variant::with_vec4()),
        ("with_planes", Variant::with_planes()),
    ];
    let all: std::collections::HashSet<Variant> = lists[0].1.iter().copied().collect();
    assert_eq!(all.len(), lists[0].1.len(), "all lists each variant once");
    for (name, list) in &lists {
        assert!(!list.is_empty(), "{name}");
        for &v in list {
            assert!(table.contains(v) && v.buildable() && all.contains(&v), "{name}: {v:?}");
        }
    }
    // What `buildable` rules out: an unwritten direction with nothing to consume it, vector
    // loads of 16-bit storage, native and packed f16 in one variant, the guard without its sums.
    let unbuildable = [
        Variant { write_out: false, ..Variant::PLAIN },
        Variant { vec4: true, storages: bloop::shaders::Storages::uniform(Storage::PackedBf16), ..Variant::PLAIN },
        Variant {
            storages: bloop::shaders::Storages {
                gradients: Storage::F16,
                output: Storage::PackedF16,
                ema: Storage::F32,
            },
            ..Variant::PLAIN
        },
        Variant { guard: true, extras: false, ..Variant::PLAIN },
    ];
    for v in unbuildable {
        assert!(!v.buildable(), "{v:?}");
    }
    // Depths and slot counts the lists leave out are still in the table (a device may pick them).
    assert!(table.contains(Variant { kind: bloop::shaders::Kind::Hierarchy(6), slots: 3, ..Variant::PLAIN }));
}
