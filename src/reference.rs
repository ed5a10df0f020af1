//! The methods in f64 on the host: the oracle the GPU kernels are tested against, written as
//! directly from the formulas in the paper's reference code as possible.

use crate::config::{Config, Method};
use crate::dtype::DType;

/// Per-leaf values, in layout order.
pub type Leaves = Vec<Vec<f64>>;

/// `<x, y>` summed over all leaves.
pub fn dot(x: &[Vec<f64>], y: &[Vec<f64>]) -> f64 {
    x.iter().zip(y).flat_map(|(a, b)| a.iter().zip(b)).map(|(a, b)| a * b).sum()
}

/// `e + b * (g - e)` for every element.
fn ema_update(ema: &mut Leaves, grad: &[Vec<f64>], b: f64) {
    for (e_leaf, g_leaf) in ema.iter_mut().zip(grad) {
        for (e, g) in e_leaf.iter_mut().zip(g_leaf) {
            *e += b * (g - *e);
        }
    }
}

/// Maps `f(main, aux, e, a)` over every element (`e`, `a` are 0 where the method has none).
fn combine(
    g_main: &[Vec<f64>],
    g_aux: &[Vec<f64>],
    main_ema: &[Vec<f64>],
    aux_ema: &[Vec<f64>],
    f: impl Fn(f64, f64, f64, f64) -> f64,
) -> Leaves {
    let at = |leaves: &[Vec<f64>], i: usize, j: usize| leaves.get(i).map_or(0.0, |l| l[j]);
    g_main
        .iter()
        .enumerate()
        .map(|(i, leaf)| {
            (0..leaf.len()).map(|j| f(leaf[j], g_aux[i][j], at(main_ema, i, j), at(aux_ema, i, j))).collect()
        })
        .collect()
}

/// The CPU counterpart of a GPU state.
#[derive(Clone, Debug, PartialEq)]
pub struct ReferenceState {
    /// The configuration the steps follow.
    pub config: Config,
    /// EMA of the main gradient (empty for `mixed`).
    pub main_ema: Leaves,
    /// EMA of the auxiliary gradient (empty unless `pcgrad`).
    pub aux_ema: Leaves,
    /// Steps the guard skipped.
    pub skipped_steps: u64,
}

/// Rounds every value to what `dtype` stores (f64 -> f32 -> dtype).
fn round_to(leaves: &mut Leaves, dtype: DType) {
    if dtype != DType::F32 {
        leaves.iter_mut().flatten().for_each(|x| *x = dtype.round(*x as f32) as f64);
    }
}

impl ReferenceState {
    /// A reference state starting from these averages.
    pub fn new(config: Config, main_ema: Leaves, aux_ema: Leaves) -> ReferenceState {
        ReferenceState { config, main_ema, aux_ema, skipped_steps: 0 }
    }

    /// One step: updates the averages and returns the direction. With the guard, a step whose
    /// gradients hold an inf or NaN returns zeros and leaves the averages as they were. Averages
    /// stored in 16 bits are rounded after the step, as the GPU stores them; the direction uses
    /// them unrounded, as the GPU computes it.
    pub fn step(&mut self, g_main: &[Vec<f64>], g_aux: &[Vec<f64>]) -> Leaves {
        let direction = self.unrounded_step(g_main, g_aux);
        round_to(&mut self.main_ema, self.config.types.ema);
        round_to(&mut self.aux_ema, self.config.types.ema);
        direction
    }

    fn unrounded_step(&mut self, g_main: &[Vec<f64>], g_aux: &[Vec<f64>]) -> Leaves {
        let c = self.config;
        let finite = |leaves: &[Vec<f64>]| leaves.iter().flatten().all(|x| x.is_finite());
        if c.guard && !(finite(g_main) && finite(g_aux)) {
            self.skipped_steps += 1;
            return g_main.iter().map(|leaf| vec![0.0; leaf.len()]).collect();
        }
        // Two gradients are a hierarchy of one aux loss, which is bloop with lambda = l_1 (more
        // levels step through `crate::hierarchy::HierarchyReference`).
        let l = if c.method == Method::Hierarchy {
            assert_eq!(c.levels, 1, "a hierarchy of {} levels steps through HierarchyReference", c.levels);
            c.level_lambdas()[0]
        } else {
            c.lambda
        };
        let s = c.scale();
        let ratio = |dot_xy: f64, sq_x: f64| {
            let r = dot_xy / (sq_x + c.eps);
            c.ratio_cap().map_or(r, |cap| r.min(cap))
        };
        match c.method {
            Method::Mixed => combine(g_main, g_aux, &[], &[], |gm, ga, _, _| s * (gm + l * ga)),
            Method::Bloop | Method::DynamicBarrier | Method::Hierarchy => {
                // With project_first the projection uses the previous steps' average.
                let old = self.main_ema.clone();
                ema_update(&mut self.main_ema, g_main, c.ema);
                let e = if c.project_first() { &old } else { &self.main_ema };
                let r = ratio(dot(e, g_aux), dot(e, e));
                if c.ratio_only {
                    combine(g_main, g_aux, &[], &[], |gm, ga, _, _| s * ((1.0 - l * r) * gm + l * ga))
                } else {
                    combine(g_main, g_aux, e, &[], |gm, ga, e, _| s * (gm + l * (ga - r * e)))
                }
            }
            Method::PcGrad => {
                let (old_main, old_aux) = (self.main_ema.clone(), self.aux_ema.clone());
                ema_update(&mut self.main_ema, g_main, c.ema);
                ema_update(&mut self.aux_ema, g_aux, c.ema);
                let (e, a) = if c.project_first() { (&old_main, &old_aux) } else { (&self.main_ema, &self.aux_ema) };
                let r1 = ratio(dot(e, g_aux), dot(e, e));
                let r2 = ratio(dot(a, g_main), dot(a, a));
                combine(g_main, g_aux, e, a, |gm, ga, e, a| s * ((gm - r2 * a) + l * (ga - r1 * e)))
            }
        }
    }
}

/// `||out - expected||_2 / ||expected||_2` over all leaves, or `||out||_2` where the expected
/// norm is 0: the measure the golden cases are judged by.
pub fn relative_error(out: &[Vec<f64>], expected: &[Vec<f64>]) -> f64 {
    let diff: f64 = out.iter().zip(expected).flat_map(|(a, b)| a.iter().zip(b)).map(|(a, b)| (a - b) * (a - b)).sum();
    let norm = dot(expected, expected);
    if norm == 0.0 {
        diff.sqrt()
    } else {
        (diff / norm).sqrt()
    }
}

/// f32 leaves widened to f64.
pub fn widen(leaves: &[Vec<f32>]) -> Leaves {
    leaves.iter().map(|l| l.iter().map(|&x| x as f64).collect()).collect()
}
