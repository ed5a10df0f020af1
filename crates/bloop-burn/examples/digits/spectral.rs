//! The aux loss `sum_l log ||W_l||_2^2` and its gradient, two ways:
//!
//! - **exact** (the default, as the authors' script computes it with `jnp.linalg.norm(W, ord=2)`):
//!   at every training step the top singular triple `(sigma, u, v)` of each weight matrix from
//!   an SVD on the host in f64; the loss term is `log (u^T W v)^2` with `u`, `v` held constant,
//!   whose value is `log sigma^2` and whose gradient is `2 u v^T / sigma`, the gradient of
//!   `log sigma_max^2` wherever the top singular value is simple;
//! - **power** (`--power-steps N`): `N` power-iteration steps per training step with the
//!   singular vectors carried between steps, as trainers often do it; with `N = 1` the top of a
//!   flattened spectrum is not followed and the penalty lands on a mix of directions.

use burn::tensor::{Device, Tensor, TensorData};
use nalgebra::DMatrix;

use crate::data::Rng;

/// The largest singular value of a `rows x cols` row-major matrix and its singular vectors
/// (`u` of length `rows`, `v` of length `cols`, `W v = sigma u`).
#[derive(Clone, Debug)]
pub struct TopSingular {
    pub sigma: f64,
    pub u: Vec<f64>,
    pub v: Vec<f64>,
}

/// The exact top singular triple, from a full SVD in f64 (the matrices here are at most
/// 256 x 128, a few milliseconds each).
pub fn top_singular(w: &[f64], rows: usize, cols: usize) -> TopSingular {
    assert_eq!(w.len(), rows * cols, "a {rows} x {cols} matrix");
    let svd = DMatrix::from_row_slice(rows, cols, w).svd(true, true);
    let (u, v_t) = (svd.u.expect("computed"), svd.v_t.expect("computed"));
    // nalgebra sorts the singular values, but the largest is found, not assumed, at no cost.
    let top = svd.singular_values.argmax().0;
    TopSingular {
        sigma: svd.singular_values[top],
        u: u.column(top).iter().copied().collect(),
        v: v_t.row(top).iter().copied().collect(),
    }
}

/// `log sigma_max^2` of a matrix and its gradient `2 u v^T / sigma` (row-major, like `w`): the
/// host's statement of what the device's loss term differentiates to, for the tests.
#[cfg(test)]
pub fn log_sigma_sq_gradient(w: &[f64], rows: usize, cols: usize) -> (f64, Vec<f64>) {
    let t = top_singular(w, rows, cols);
    let gradient = (0..rows * cols).map(|k| 2.0 * t.u[k / cols] * t.v[k % cols] / t.sigma).collect();
    ((t.sigma * t.sigma).ln(), gradient)
}

/// How the training steps compute the spectral norms.
pub enum SpectralNorm {
    Exact,
    /// Singular-vector estimates carried between training steps: `u` as `[1, rows]`, `v` as
    /// `[cols, 1]` per weight matrix.
    Power {
        steps: usize,
        u: Vec<Tensor<2>>,
        v: Vec<Tensor<2>>,
    },
}

fn normalize(t: Tensor<2>) -> Tensor<2> {
    let norm = t.clone().powi_scalar(2).sum().sqrt().unsqueeze::<2>();
    t / norm
}

/// A weight matrix read back to the host in f64, row-major.
pub fn host_matrix(w: Tensor<2>) -> Vec<f64> {
    w.into_data().try_into_vec_as::<f32>().expect("f32 weights").iter().map(|&x| x as f64).collect()
}

impl SpectralNorm {
    /// `power_steps`: `None` for the exact norm; else the carried iteration's steps per
    /// training step, its vectors drawn from `seed` for matrices of the given `(rows, cols)`.
    pub fn new(power_steps: Option<usize>, shapes: &[(usize, usize)], seed: u64, device: &Device) -> SpectralNorm {
        let Some(steps) = power_steps else { return SpectralNorm::Exact };
        let mut rng = Rng::new(seed);
        let mut unit = |n: usize, shape: [usize; 2]| {
            let x: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
            normalize(Tensor::from_data(TensorData::new(x, shape), device))
        };
        let u = shapes.iter().map(|&(rows, _)| unit(rows, [1, rows])).collect();
        let v = shapes.iter().map(|&(_, cols)| unit(cols, [cols, 1])).collect();
        SpectralNorm::Power { steps, u, v }
    }

    /// `sum_l log sigma_l^2` over `weights` (`[rows, cols]` each), differentiable in them.
    pub fn aux_loss(&mut self, weights: Vec<Tensor<2>>) -> Tensor<1> {
        let terms = weights.into_iter().enumerate().map(|(l, w)| self.log_sigma_sq(l, w));
        terms.reduce(|a, b| a + b).expect("at least one weight matrix")
    }

    fn log_sigma_sq(&mut self, l: usize, w: Tensor<2>) -> Tensor<1> {
        match self {
            SpectralNorm::Exact => {
                let [rows, cols] = w.dims();
                let device = w.device();
                let t = top_singular(&host_matrix(w.clone().detach()), rows, cols);
                let row = |x: &[f64], shape: [usize; 2]| {
                    Tensor::<2>::from_data(
                        TensorData::new(x.iter().map(|&a| a as f32).collect::<Vec<_>>(), shape),
                        &device,
                    )
                };
                // sigma = u^T W v with u, v constant: value sigma, gradient u v^T.
                let sigma = row(&t.u, [1, rows]).matmul(w).matmul(row(&t.v, [cols, 1]));
                sigma.powi_scalar(2).sum().log()
            }
            SpectralNorm::Power { steps, u, v } => {
                // steps - 1 untracked steps, then one whose `W v` is tracked: `v = W^T u / |W^T u|`
                // from the carried `u`, `s = W v`, `u' = s / |s|`. `sigma = u'^T W v = |W v|` with
                // `u'`, `v` held constant, so `sigma^2` is `|W v|^2` (same value and gradient
                // `2 u' v^T / sigma` per `log sigma^2`, two kernels fewer per layer).
                let detached = w.clone().detach();
                for _ in 1..*steps {
                    v[l] = normalize(u[l].clone().matmul(detached.clone()).transpose());
                    u[l] = normalize(detached.clone().matmul(v[l].clone()).transpose());
                }
                v[l] = normalize(u[l].clone().matmul(detached).transpose());
                let s = w.matmul(v[l].clone());
                u[l] = normalize(s.clone().detach().transpose());
                s.powi_scalar(2).sum().log()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nalgebra::DMatrix;

    /// A `rows x cols` matrix `Q1 diag(sigmas) Q2^T` with random orthonormal `Q1`, `Q2`.
    fn with_singular_values(rows: usize, cols: usize, sigmas: &[f64], seed: u64) -> Vec<f64> {
        let mut rng = Rng::new(seed);
        let mut orthonormal = |n: usize| DMatrix::from_fn(n, n, |_, _| rng.normal()).qr().q();
        let (q1, q2) = (orthonormal(rows), orthonormal(cols));
        let mut d = DMatrix::zeros(rows, cols);
        for (i, &s) in sigmas.iter().enumerate() {
            d[(i, i)] = s;
        }
        let w = q1 * d * q2.transpose();
        (0..rows).flat_map(|i| (0..cols).map(move |j| (i, j))).map(|(i, j)| w[(i, j)]).collect()
    }

    #[test]
    fn the_top_singular_triple_is_found_when_the_top_two_values_are_close() {
        let (rows, cols) = (7, 5);
        let w = with_singular_values(rows, cols, &[3.0, 2.999, 1.0, 0.5, 0.1], 11);
        let t = top_singular(&w, rows, cols);
        assert!((t.sigma - 3.0).abs() < 1e-12, "{}", t.sigma);
        for i in 0..rows {
            let wv: f64 = (0..cols).map(|j| w[i * cols + j] * t.v[j]).sum();
            assert!((wv - t.sigma * t.u[i]).abs() < 1e-12, "row {i}");
        }
    }

    #[test]
    fn the_exact_gradient_matches_a_finite_difference_of_log_sigma_max_squared() {
        // The top two singular values agree to four digits: the case one carried power step
        // per training step cannot follow.
        let (rows, cols) = (6, 4);
        let w = with_singular_values(rows, cols, &[2.0, 1.9998, 0.7, 0.3], 5);
        let (value, gradient) = log_sigma_sq_gradient(&w, rows, cols);
        assert!((value - (4.0f64).ln()).abs() < 1e-12);
        let log_sigma_sq = |w: &[f64]| log_sigma_sq_gradient(w, rows, cols).0;
        let h = 1e-7;
        for k in 0..rows * cols {
            let (mut plus, mut minus) = (w.clone(), w.clone());
            plus[k] += h;
            minus[k] -= h;
            let numeric = (log_sigma_sq(&plus) - log_sigma_sq(&minus)) / (2.0 * h);
            assert!(
                (numeric - gradient[k]).abs() < 1e-6,
                "element {k}: finite difference {numeric}, exact {}",
                gradient[k]
            );
        }
        // A gradient that ignored the close second direction would be off by far more than that.
        assert!(gradient.iter().map(|g| g.abs()).fold(0.0, f64::max) > 0.1);
    }

    #[test]
    fn the_exact_aux_term_on_the_device_has_the_host_value_and_gradient() {
        let (device, _) = Device::wgpu_options().init_with_setup().expect("a wgpu adapter (lavapipe in CI)");
        let device = device.autodiff();
        let shapes = [(6, 4), (4, 3)];
        let hosts: Vec<Vec<f64>> = vec![
            with_singular_values(6, 4, &[2.0, 1.9998, 0.7, 0.3], 5),
            with_singular_values(4, 3, &[1.5, 0.2, 0.1], 6),
        ];
        let weights: Vec<Tensor<2>> = hosts
            .iter()
            .zip(shapes)
            .map(|(w, (rows, cols))| {
                let data = TensorData::new(w.iter().map(|&x| x as f32).collect::<Vec<_>>(), [rows, cols]);
                Tensor::<2>::from_data(data, &device).require_grad()
            })
            .collect();
        let loss = SpectralNorm::new(None, &shapes, 0, &device).aux_loss(weights.clone());
        let grads = loss.backward();
        let mut expected_loss = 0.0;
        for ((w, host), (rows, cols)) in weights.iter().zip(&hosts).zip(shapes) {
            // The host's reference from the f32 values the device holds.
            let held: Vec<f64> = host.iter().map(|&x| x as f32 as f64).collect();
            let (value, gradient) = log_sigma_sq_gradient(&held, rows, cols);
            expected_loss += value;
            let got = host_matrix(w.grad(&grads).expect("a gradient"));
            for (k, (g, e)) in got.iter().zip(&gradient).enumerate() {
                assert!((g - e).abs() < 1e-5 * (1.0 + e.abs()), "element {k}: device {g}, host {e}");
            }
        }
        let got_loss = loss.into_data().try_into_vec_as::<f32>().unwrap()[0] as f64;
        assert!((got_loss - expected_loss).abs() < 1e-5, "device {got_loss}, host {expected_loss}");
    }
}
