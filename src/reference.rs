//! The methods in f64 on the host: the oracle the GPU kernels are tested against, written as
//! directly from the formulas in the paper's reference code as possible.

use crate::config::{Config, Method};
use crate::dtype::DType;
use crate::optimizer::{Optimizer, Rule};

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

impl ReferenceState {
    /// One step whose direction `optimizer` applies to its parameters, as the fused GPU step
    /// does: a step the guard skips leaves the parameters, the optimizer's state and its step
    /// count as they were.
    pub fn step_with(&mut self, g_main: &[Vec<f64>], g_aux: &[Vec<f64>], optimizer: &mut ReferenceOptimizer) -> Leaves {
        let skipped = self.skipped_steps;
        let direction = self.unrounded_step(g_main, g_aux);
        if self.skipped_steps == skipped {
            optimizer.step(&direction);
        }
        round_to(&mut self.main_ema, self.config.types.ema);
        round_to(&mut self.aux_ema, self.config.types.ema);
        direction
    }
}

/// PyTorch's `torch.optim.SGD`, `Adam` and `AdamW` in f64 (see [`crate::optimizer`]), over
/// per-leaf parameters: the oracle of the fused optimizer stage.
#[derive(Clone, Debug, PartialEq)]
pub struct ReferenceOptimizer {
    /// The optimizer and its constants.
    pub optimizer: Optimizer,
    /// The current learning rate (a schedule changes it between steps).
    pub lr: f64,
    /// The parameters, per leaf.
    pub params: Leaves,
    /// Per state tensor ([`crate::OptKind::state_names`]), per leaf.
    pub state: Vec<Leaves>,
    /// Steps applied so far.
    pub step: u64,
}

impl ReferenceOptimizer {
    /// Starts from `params` (rounded to the optimizer's parameter type) and zero state.
    pub fn new(optimizer: Optimizer, mut params: Leaves) -> ReferenceOptimizer {
        round_to(&mut params, optimizer.params);
        let zeros: Leaves = params.iter().map(|l| vec![0.0; l.len()]).collect();
        let state = vec![zeros; optimizer.kind().state_names().len()];
        ReferenceOptimizer { optimizer, lr: optimizer.lr, params, state, step: 0 }
    }

    /// Applies one step with the gradient (the direction) `grad`. Parameters and state stored
    /// in 16 bits are rounded after the step, as the GPU stores them.
    pub fn step(&mut self, grad: &[Vec<f64>]) {
        self.step += 1;
        let (lr, wd, t) = (self.lr, self.optimizer.weight_decay, self.step as f64);
        match self.optimizer.rule {
            Rule::Sgd { momentum, dampening, nesterov } => {
                for (i, leaf) in self.params.iter_mut().enumerate() {
                    for (j, p) in leaf.iter_mut().enumerate() {
                        let mut g = grad[i][j] + wd * *p;
                        if momentum != 0.0 {
                            let buf = &mut self.state[0][i][j];
                            *buf = if t == 1.0 { g } else { momentum * *buf + (1.0 - dampening) * g };
                            g = if nesterov { g + momentum * *buf } else { *buf };
                        }
                        *p -= lr * g;
                    }
                }
            }
            Rule::Adam { beta1, beta2, eps, decoupled } => {
                let step_size = lr / (1.0 - beta1.powf(t));
                let bc2_sqrt = (1.0 - beta2.powf(t)).sqrt();
                let (m, v) = self.state.split_at_mut(1);
                for (i, leaf) in self.params.iter_mut().enumerate() {
                    for (j, p) in leaf.iter_mut().enumerate() {
                        let mut g = grad[i][j];
                        if decoupled {
                            *p *= 1.0 - lr * wd;
                        } else {
                            g += wd * *p;
                        }
                        let (m, v) = (&mut m[0][i][j], &mut v[0][i][j]);
                        *m += (1.0 - beta1) * (g - *m);
                        *v = beta2 * *v + (1.0 - beta2) * g * g;
                        *p -= step_size * (*m / (v.sqrt() / bc2_sqrt + eps));
                    }
                }
            }
        }
        round_to(&mut self.params, self.optimizer.params);
        for tensor in &mut self.state {
            round_to(tensor, self.optimizer.state);
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
