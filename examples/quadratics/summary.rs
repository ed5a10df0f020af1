//! The experiment's results in a machine-readable form: the native example writes it as
//! `summary.json`, the web demo hands the same JSON to its page, and the browser test compares
//! the two run for run.

use serde::Serialize;

use crate::experiment::{bloop_standings, fronts, History, Run};

/// One method at one lambda: its losses after the last epoch, and its best main loss over the
/// run with the aux loss there (its point on the Pareto front).
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    pub method: &'static str,
    pub lambda: f64,
    pub final_main: f64,
    pub final_aux: f64,
    pub best_main: f64,
    pub best_aux: f64,
}

impl RunResult {
    pub fn new(run: &Run, history: &History) -> RunResult {
        let (best_main, best_aux) = history.best();
        RunResult {
            method: run.name,
            lambda: run.config.lambda,
            final_main: history.main.last().copied().unwrap_or(f64::NAN),
            final_aux: history.aux.last().copied().unwrap_or(f64::NAN),
            best_main,
            best_aux,
        }
    }
}

/// Where BLOOP's point at `lambda` stands against the other methods' fronts
/// ([`crate::experiment::Standing::describe`]).
#[derive(Clone, Debug, Serialize)]
pub struct BloopPoint {
    pub lambda: f64,
    pub standing: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub adapter: String,
    pub seed: u64,
    pub epochs: usize,
    pub runs: Vec<RunResult>,
    /// BLOOP's points in the order of its runs above.
    pub bloop: Vec<BloopPoint>,
    /// How many of BLOOP's points rank first, of how many are comparable.
    pub bloop_first: usize,
    pub bloop_comparable: usize,
}

impl Summary {
    pub fn new(adapter: String, seed: u64, epochs: usize, runs: Vec<RunResult>) -> Summary {
        let fronts = fronts(runs.iter().map(|r| (r.method, (r.best_aux, r.best_main))));
        let lambdas = runs.iter().filter(|r| r.method == "bloop").map(|r| r.lambda);
        let standings = bloop_standings(&fronts);
        let bloop: Vec<BloopPoint> =
            lambdas.zip(&standings).map(|(lambda, s)| BloopPoint { lambda, standing: s.describe() }).collect();
        let bloop_first = standings.iter().filter(|s| **s == crate::experiment::Standing::First).count();
        let bloop_comparable = standings.iter().filter(|s| **s != crate::experiment::Standing::NotComparable).count();
        Summary { adapter, seed, epochs, runs, bloop, bloop_first, bloop_comparable }
    }
}
