//! The paper's quadratic experiment (the reference repository's `quadratics` notebook): the
//! problem, the runs, the f64 host reference and how BLOOP's points stand against the other
//! methods' fronts. The GPU side is `trainer.rs`; the native example, its tests, the MPI example
//! and the web demo (`crates/bloop-web`) all include this file.
//!
//! Main loss: least squares with more parameters than rows, `1/2 mean((X theta - y)^2)`, with
//! `X = Z diag(linspace(1, 10, p))`, `Z` standard normal, `n = 256`, `p = 300`,
//! `y = X theta_true + 0.05 noise`. It has many minimisers; the aux loss
//! `1/2 |theta - theta*|^2`, `theta* = 10 N(0, I)`, should pick among them. SGD on mini-batches
//! of 64 rows, learning rate 1e-3, theta from zeros, EMAs from zeros.

use bloop::reference::ReferenceState;
use bloop::rng::SplitMix64;
use bloop::{Config, Method};

pub const ROWS: usize = 256;
pub const COLS: usize = 300;
pub const BATCH: usize = 64;
pub const STEPS_PER_EPOCH: usize = ROWS / BATCH;
pub const LEARNING_RATE: f64 = 1e-3;

/// The data, shared by every run.
pub struct Problem {
    /// `ROWS x COLS`, row-major.
    pub x: Vec<f32>,
    pub y: Vec<f32>,
    pub target: Vec<f32>,
}

impl Problem {
    pub fn generate(seed: u64) -> Problem {
        let mut rng = SplitMix64::new(seed);
        let theta_true: Vec<f64> = (0..COLS).map(|_| rng.next_normal()).collect();
        let target = (0..COLS).map(|_| (10.0 * rng.next_normal()) as f32).collect();
        let scale = |j: usize| 1.0 + 9.0 * j as f64 / (COLS - 1) as f64;
        let x: Vec<f32> = (0..ROWS * COLS).map(|k| (rng.next_normal() * scale(k % COLS)) as f32).collect();
        let y = (0..ROWS)
            .map(|i| {
                let clean: f64 = (0..COLS).map(|j| x[i * COLS + j] as f64 * theta_true[j]).sum();
                (clean + 0.05 * rng.next_normal()) as f32
            })
            .collect();
        Problem { x, y, target }
    }

    pub fn main_loss(&self, theta: &[f64]) -> f64 {
        let sq: f64 = (0..ROWS).map(|i| (self.row_dot(i, theta) - self.y[i] as f64).powi(2)).sum();
        0.5 * sq / ROWS as f64
    }

    pub fn aux_loss(&self, theta: &[f64]) -> f64 {
        0.5 * theta.iter().zip(&self.target).map(|(t, s)| (t - *s as f64).powi(2)).sum::<f64>()
    }

    fn row_dot(&self, row: usize, theta: &[f64]) -> f64 {
        (0..COLS).map(|j| self.x[row * COLS + j] as f64 * theta[j]).sum()
    }
}

/// The mini-batch order: a permutation of the rows for each epoch (Fisher-Yates).
pub fn batch_order(seed: u64, epochs: usize) -> Vec<u32> {
    let mut rng = SplitMix64::new(seed);
    let mut order = Vec::with_capacity(epochs * ROWS);
    for _ in 0..epochs {
        let mut perm: Vec<u32> = (0..ROWS as u32).collect();
        for i in (1..ROWS).rev() {
            perm.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        order.extend(perm);
    }
    order
}

/// One method at one lambda.
#[derive(Clone, Copy, Debug)]
pub struct Run {
    pub name: &'static str,
    pub config: Config,
}

/// The methods of the notebook: mixing, PCGrad on the current gradients, the dynamic barrier
/// (ema 1.0) and BLOOP (ema 0.01).
pub fn runs_at(lambda: f64) -> [Run; 4] {
    let run = |name, method, ema| Run { name, config: Config::new(method).ema(ema).lambda(lambda) };
    [
        run("mixed", Method::Mixed, 1.0),
        run("pcgrad", Method::PcGrad, 1.0),
        run("dynamic_barrier", Method::DynamicBarrier, 1.0),
        run("bloop", Method::Bloop, 0.01),
    ]
}

/// `logspace(-3, 3, 10)`.
pub fn lambda_grid() -> Vec<f64> {
    (0..10).map(|i| 10f64.powf(-3.0 + 6.0 * i as f64 / 9.0)).collect()
}

/// Main and aux loss after 0, 1, 2, ... epochs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    pub main: Vec<f64>,
    pub aux: Vec<f64>,
}

impl History {
    /// The lowest main loss seen, and the aux loss at that evaluation.
    pub fn best(&self) -> (f64, f64) {
        let k = (0..self.main.len())
            .filter(|&k| self.main[k].is_finite())
            .min_by(|&a, &b| self.main[a].total_cmp(&self.main[b]))
            .unwrap_or(0);
        (self.main[k], self.aux[k])
    }
}

/// The experiment on the host: f64 gradients, the f64 reference combination.
pub fn run_cpu(problem: &Problem, order: &[u32], run: &Run, epochs: usize) -> History {
    let mut theta = vec![0f64; COLS];
    let zeros = vec![vec![0f64; COLS]];
    let aux_ema = if run.config.method == Method::PcGrad { zeros.clone() } else { vec![] };
    let main_ema = if run.config.method == Method::Mixed { vec![] } else { zeros };
    let mut state = ReferenceState::new(run.config, main_ema, aux_ema);
    let mut history = History::default();
    for epoch in 0..=epochs {
        history.main.push(problem.main_loss(&theta));
        history.aux.push(problem.aux_loss(&theta));
        if epoch == epochs {
            break;
        }
        for b in 0..STEPS_PER_EPOCH {
            let rows = &order[epoch * ROWS + b * BATCH..][..BATCH];
            let residual: Vec<f64> =
                rows.iter().map(|&r| problem.row_dot(r as usize, &theta) - problem.y[r as usize] as f64).collect();
            let g_main: Vec<f64> = (0..COLS)
                .map(|j| {
                    rows.iter().zip(&residual).map(|(&r, e)| problem.x[r as usize * COLS + j] as f64 * e).sum::<f64>()
                        / BATCH as f64
                })
                .collect();
            let g_aux: Vec<f64> = theta.iter().zip(&problem.target).map(|(t, s)| t - *s as f64).collect();
            let direction = state.step(&[g_main], &[g_aux]);
            for (t, d) in theta.iter_mut().zip(&direction[0]) {
                *t -= LEARNING_RATE * d;
            }
        }
    }
    history
}

/// How a point (aux, main) compares with another method's curve of (aux, main) points:
/// `Some(true)` if the curve does better at the same aux loss (interpolated in log-log) or has a
/// point at most as high on both losses; `Some(false)` if the point is lower than the curve at
/// the same aux loss, or lower on both losses than the curve's lowest-aux point; `None` if the
/// curve never reaches that aux loss and does not dominate the point.
pub fn beaten_by(curve: &[(f64, f64)], (aux, main): (f64, f64)) -> Option<bool> {
    let mut points: Vec<(f64, f64)> =
        curve.iter().copied().filter(|(a, m)| a.is_finite() && m.is_finite() && *a > 0.0 && *m > 0.0).collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    if points.iter().any(|&(a, m)| a <= aux && m <= main) {
        return Some(true);
    }
    let interpolated = points.windows(2).find(|w| w[0].0 <= aux && aux <= w[1].0).map(|w| {
        let (a0, a1) = (w[0].0.ln(), w[1].0.ln());
        let t = if a1 > a0 { (aux.ln() - a0) / (a1 - a0) } else { 0.0 };
        (w[0].1.ln() + t * (w[1].1.ln() - w[0].1.ln())).exp()
    });
    match (interpolated, points.first()) {
        (Some(other), _) => Some(other <= main),
        (None, Some(&(lowest_aux, its_main))) if aux < lowest_aux && main < its_main => Some(false),
        _ => None,
    }
}

/// Where one of BLOOP's points (its best main loss and the aux loss there, at one lambda) stands
/// against the other methods' fronts over the grid.
#[derive(Clone, Debug, PartialEq)]
pub enum Standing {
    /// No other method's front reaches its aux loss or dominates it.
    NotComparable,
    /// Lowest main loss at its aux loss: BLOOP ranks first there.
    First,
    /// These methods' fronts do at least as well.
    BeatenBy(Vec<&'static str>),
}

impl Standing {
    /// `first`, `not comparable` or `beaten by NAME, NAME`.
    pub fn describe(&self) -> String {
        match self {
            Standing::NotComparable => "not comparable".into(),
            Standing::First => "first".into(),
            Standing::BeatenBy(names) => format!("beaten by {}", names.join(", ")),
        }
    }
}

/// Each method's front: (aux, main) at its best main loss, per lambda, in the order given.
pub type Fronts = Vec<(&'static str, Vec<(f64, f64)>)>;

/// The fronts of `points` (method, lambda, (aux, main)) in the order the methods first appear.
pub fn fronts(points: impl IntoIterator<Item = (&'static str, (f64, f64))>) -> Fronts {
    let mut fronts: Fronts = Vec::new();
    for (name, point) in points {
        match fronts.iter_mut().find(|(n, _)| *n == name) {
            Some((_, front)) => front.push(point),
            None => fronts.push((name, vec![point])),
        }
    }
    fronts
}

/// How each of BLOOP's points stands against the other methods' fronts (empty without BLOOP).
pub fn bloop_standings(fronts: &Fronts) -> Vec<Standing> {
    let Some((_, bloop)) = fronts.iter().find(|(n, _)| *n == "bloop") else { return Vec::new() };
    bloop
        .iter()
        .map(|&point| {
            let verdicts: Vec<(&'static str, Option<bool>)> =
                fronts.iter().filter(|(n, _)| *n != "bloop").map(|(n, c)| (*n, beaten_by(c, point))).collect();
            if verdicts.iter().all(|(_, v)| v.is_none()) {
                return Standing::NotComparable;
            }
            let beaten: Vec<&'static str> =
                verdicts.iter().filter(|(_, v)| *v == Some(true)).map(|(n, _)| *n).collect();
            if beaten.is_empty() {
                Standing::First
            } else {
                Standing::BeatenBy(beaten)
            }
        })
        .collect()
}
