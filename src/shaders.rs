//! WGSL sources and the variants the library builds from them.
//!
//! Each stage is a `.wgsl` file in `shaders/`. A small preprocessor resolves `#import name`
//! (another file of that folder) and `#ifdef NAME` / `#ifndef NAME` / `#else` / `#endif`, so
//! one source serves every method without runtime branches in the hot loops.

use std::collections::HashSet;

use crate::config::{Config, Method};

const SOURCES: &[(&str, &str)] = &[
    ("bindings", include_str!("../shaders/bindings.wgsl")),
    ("reduce", include_str!("../shaders/reduce.wgsl")),
    ("accumulate", include_str!("../shaders/accumulate.wgsl")),
    ("finalize", include_str!("../shaders/finalize.wgsl")),
    ("apply", include_str!("../shaders/apply.wgsl")),
    ("clear", include_str!("../shaders/clear.wgsl")),
];

/// The computation a kernel set specialises in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `bloop` and `dynamic_barrier` (they differ only in the ratio cap, a uniform).
    Project,
    /// `bloop` / `dynamic_barrier` with `ratio_only`.
    RatioOnly,
    PcGrad,
    Mixed,
}

/// Everything that changes the generated code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Variant {
    pub kind: Kind,
    /// The output shares a buffer with an input, so the inputs must be bound writable.
    pub inputs_writable: bool,
    /// Reduce with subgroup operations (`Features::SUBGROUP`) instead of a shared-memory tree.
    pub subgroups: bool,
    /// Skip steps with non-finite gradients: zeros out, averages untouched, counter increased.
    pub guard: bool,
    /// Sum the gradients' norms and non-finite elements (for the guard and for diagnostics).
    pub extras: bool,
}

/// The stages a step runs, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    Accumulate,
    Finalize,
    Apply,
    /// Zeros the output of a skipped step (mixing with the guard only).
    Clear,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Accumulate => "accumulate",
            Stage::Finalize => "finalize",
            Stage::Apply => "apply",
            Stage::Clear => "clear",
        }
    }
}

impl Kind {
    pub fn of(config: &Config) -> Kind {
        match config.method {
            Method::Bloop | Method::DynamicBarrier if config.ratio_only => Kind::RatioOnly,
            Method::Bloop | Method::DynamicBarrier => Kind::Project,
            Method::PcGrad => Kind::PcGrad,
            Method::Mixed => Kind::Mixed,
        }
    }

    pub fn has_main_ema(self) -> bool {
        self != Kind::Mixed
    }

    pub fn has_aux_ema(self) -> bool {
        self == Kind::PcGrad
    }
}

impl Variant {
    /// Every variant the library can build; the cross-compilation test walks this list.
    pub fn all() -> Vec<Variant> {
        let kinds = [Kind::Project, Kind::RatioOnly, Kind::PcGrad, Kind::Mixed];
        let mut all = Vec::new();
        for kind in kinds {
            for inputs_writable in [false, true] {
                for subgroups in [false, true] {
                    // The guard needs the extra sums; diagnostics alone ask for the sums only.
                    for (guard, extras) in [(false, false), (false, true), (true, true)] {
                        all.push(Variant { kind, inputs_writable, subgroups, guard, extras });
                    }
                }
            }
        }
        all
    }

    /// The stages this variant runs, in order: mixing needs no reduction unless the guard or
    /// diagnostics want the gradients' sums.
    pub fn stages(self) -> &'static [Stage] {
        match (self.kind, self.extras, self.guard) {
            (Kind::Mixed, false, _) => &[Stage::Apply],
            (Kind::Mixed, true, false) => &[Stage::Apply, Stage::Finalize],
            (Kind::Mixed, true, true) => &[Stage::Apply, Stage::Finalize, Stage::Clear],
            _ => &[Stage::Accumulate, Stage::Finalize, Stage::Apply],
        }
    }

    fn defines(self) -> HashSet<&'static str> {
        let mut defines = HashSet::new();
        match self.kind {
            Kind::Project => {
                defines.extend(["MAIN_EMA", "PROJECT", "UPDATE_EMA_IN_APPLY"]);
            }
            // Without the guard, ratio_only writes the average in the first pass (28 bytes per
            // element); with it, only once the step is known to be finite (32 bytes).
            Kind::RatioOnly if self.guard => {
                defines.extend(["MAIN_EMA", "RATIO_ONLY", "UPDATE_EMA_IN_APPLY"]);
            }
            Kind::RatioOnly => {
                defines.extend(["MAIN_EMA", "RATIO_ONLY", "WRITE_EMA_IN_ACCUMULATE"]);
            }
            Kind::PcGrad => {
                defines.extend(["MAIN_EMA", "AUX_EMA", "PROJECT", "UPDATE_EMA_IN_APPLY"]);
            }
            Kind::Mixed => {
                defines.insert("MIXED");
                if self.extras {
                    defines.insert("MIXED_SUMS");
                }
            }
        }
        if self.extras {
            defines.insert("EXTRAS");
        }
        if self.guard {
            defines.insert("GUARD");
            if self.kind != Kind::Mixed {
                defines.insert("GUARD_APPLY");
            }
        }
        if self.inputs_writable {
            defines.insert("INPUTS_WRITABLE");
        }
        if self.subgroups {
            defines.insert("SUBGROUPS");
        }
        defines
    }

    /// The WGSL of one stage of this variant.
    pub fn source(self, stage: Stage) -> String {
        preprocess(stage.name(), &self.defines())
    }
}

fn source_file(name: &str) -> &'static str {
    SOURCES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| *s)
        .unwrap_or_else(|| panic!("shaders/{name}.wgsl is not in SOURCES"))
}

/// Expands imports (each file once) and conditional blocks.
pub fn preprocess(entry: &str, defines: &HashSet<&str>) -> String {
    let mut out = String::new();
    let mut imported = HashSet::new();
    expand(entry, defines, &mut imported, &mut out);
    out
}

fn expand<'a>(name: &'a str, defines: &HashSet<&str>, imported: &mut HashSet<&'a str>, out: &mut String) {
    if !imported.insert(name) {
        return;
    }
    // Each entry: (this block is emitted, some branch of it was taken).
    let mut stack: Vec<(bool, bool)> = Vec::new();
    let active = |stack: &[(bool, bool)]| stack.iter().all(|&(on, _)| on);
    for line in source_file(name).lines() {
        let trimmed = line.trim();
        if let Some(symbol) = trimmed.strip_prefix("#ifdef ") {
            let on = defines.contains(symbol.trim());
            stack.push((on, on));
        } else if let Some(symbol) = trimmed.strip_prefix("#ifndef ") {
            let on = !defines.contains(symbol.trim());
            stack.push((on, on));
        } else if trimmed == "#else" {
            let top = stack.last_mut().expect("#else without #ifdef");
            *top = (!top.1, true);
        } else if trimmed == "#endif" {
            stack.pop().expect("#endif without #ifdef");
        } else if !active(&stack) {
            continue;
        } else if let Some(import) = trimmed.strip_prefix("#import ") {
            let import = SOURCES
                .iter()
                .map(|(n, _)| *n)
                .find(|n| *n == import.trim())
                .unwrap_or_else(|| panic!("unknown import `{import}` in shaders/{name}.wgsl"));
            expand(import, defines, imported, out);
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(stack.is_empty(), "unterminated #ifdef in shaders/{name}.wgsl");
}
