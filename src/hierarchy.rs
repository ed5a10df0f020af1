//! A hierarchy of auxiliary losses in f64 on the host: the oracle of [`crate::Method::Hierarchy`],
//! written from the formulas of `tests/golden/README.md` ("Extensions"), with explicit vectors
//! (no Gram-matrix shortcut), so the GPU's fused form is checked against the plain one.

use crate::config::Config;
use crate::reference::{dot, Leaves};

/// The CPU counterpart of a hierarchy state.
#[derive(Clone, Debug, PartialEq)]
pub struct HierarchyReference {
    /// The configuration the steps follow.
    pub config: Config,
    /// The averages `e_0 .. e_{k-1}`.
    pub emas: Vec<Leaves>,
    /// Steps the guard skipped.
    pub skipped_steps: u64,
    /// The ratios `<g_i, u_j> / (<u_j, u_j> + eps)` of the last step, row i - 1 for i = 1..k.
    pub ratios: Vec<Vec<f64>>,
}

fn axpy(y: &mut Leaves, a: f64, x: &[Vec<f64>]) {
    for (yl, xl) in y.iter_mut().zip(x) {
        for (y, x) in yl.iter_mut().zip(xl) {
            *y += a * x;
        }
    }
}

impl HierarchyReference {
    /// A reference starting from these averages (one per non-last loss).
    pub fn new(config: Config, emas: Vec<Leaves>) -> HierarchyReference {
        HierarchyReference { config, emas, skipped_steps: 0, ratios: Vec::new() }
    }

    /// One step over the gradients `g_0 .. g_k`: updates the averages and returns the
    /// direction. With the guard, a non-finite gradient gives zeros and leaves the averages.
    /// Averages stored in 16 bits are rounded after the step, as the GPU stores them.
    pub fn step(&mut self, grads: &[Leaves]) -> Leaves {
        let c = self.config;
        let zeros: Leaves = grads[0].iter().map(|l| vec![0.0; l.len()]).collect();
        if c.guard && !grads.iter().flatten().flatten().all(|x| x.is_finite()) {
            self.skipped_steps += 1;
            return zeros;
        }
        let old = self.emas.clone();
        for (e, g) in self.emas.iter_mut().zip(grads) {
            for (el, gl) in e.iter_mut().zip(g) {
                for (e, g) in el.iter_mut().zip(gl) {
                    *e += c.ema * (g - *e);
                }
            }
        }
        let e = if c.project_first() { &old } else { &self.emas };
        // Gram-Schmidt in priority order.
        let mut u: Vec<Leaves> = Vec::new();
        for ej in e {
            let mut uj = ej.clone();
            for ui in &u {
                let a = dot(ej, ui) / (dot(ui, ui) + c.eps);
                axpy(&mut uj, -a, ui);
            }
            u.push(uj);
        }
        let s = c.scale();
        let mut d = zeros;
        axpy(&mut d, s, &grads[0]);
        self.ratios.clear();
        for (i, g) in grads.iter().enumerate().skip(1) {
            let mut p = g.clone();
            let mut row = Vec::new();
            for uj in &u[..i] {
                let r = dot(g, uj) / (dot(uj, uj) + c.eps);
                axpy(&mut p, -r, uj);
                row.push(r);
            }
            self.ratios.push(row);
            axpy(&mut d, s * c.level_lambdas()[i - 1], &p);
        }
        let ema = c.types.ema;
        if ema != crate::dtype::DType::F32 {
            self.emas.iter_mut().flatten().flatten().for_each(|x| *x = ema.round(*x as f32) as f64);
        }
        d
    }
}
