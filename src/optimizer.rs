//! The optional optimizer stage: the direction pass applies SGD (with momentum, dampening,
//! Nesterov and weight decay) or Adam / AdamW to the parameters, so the direction never makes a
//! round trip through memory.
//!
//! The update rules are PyTorch's (`torch.optim.SGD`, `Adam`, `AdamW`, `maximize = False`,
//! `amsgrad = False`), with `g` the step's direction (what [`crate::Config`]'s method writes)
//! and `t` the number of steps applied so far, this one included (skipped steps do not count):
//!
//! - **SGD**: `g <- g + wd p`; with `momentum > 0`: `b <- g` on the first step, else
//!   `b <- momentum b + (1 - dampening) g`, then `g <- g + momentum b` (Nesterov) or `g <- b`;
//!   finally `p <- p - lr g`.
//! - **Adam**: `g <- g + wd p`; `m <- m + (1 - b1) (g - m)`; `v <- b2 v + (1 - b2) g^2`;
//!   `p <- p - (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)`.
//! - **AdamW**: as Adam without the `wd p` term in `g`, and `p <- p (1 - lr wd)` first.
//!
//! The learning rate lives in a small GPU buffer of the state
//! ([`crate::BloopState::learning_rate_buffer`]), so a schedule changes it every step without
//! rebinding or waiting: `queue.write_buffer` from the host, or a kernel of the user's. The
//! step count `t` is kept on the GPU next to it and advances only on steps the guard lets
//! through. Arithmetic is f32; parameters and optimizer state may be stored as f32, f16 or bf16.

use crate::dtype::DType;
use crate::error::{Error, Result};

/// Which update rule, and its rule-specific constants.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rule {
    /// `torch.optim.SGD`. With `momentum = 0` it keeps no state.
    Sgd {
        /// Momentum factor (0: plain SGD).
        momentum: f64,
        /// Dampening of the momentum's gradient term.
        dampening: f64,
        /// Nesterov momentum.
        nesterov: bool,
    },
    /// `torch.optim.Adam` (`decoupled = false`) or `torch.optim.AdamW` (`decoupled = true`).
    Adam {
        /// Decay of the first moment.
        beta1: f64,
        /// Decay of the second moment.
        beta2: f64,
        /// Added to the square root of the second moment.
        eps: f64,
        /// Weight decay applied to the parameters directly (AdamW) instead of added to the
        /// gradient.
        decoupled: bool,
    },
}

/// An optimizer applied to the parameters in the step's direction pass. Build with
/// [`Optimizer::sgd`], [`Optimizer::adam`] or [`Optimizer::adamw`] and the setters, and hand it
/// to [`crate::Config::optimizer`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Optimizer {
    /// The update rule and its constants.
    pub rule: Rule,
    /// The initial learning rate (the state's learning-rate buffer holds the current one).
    pub lr: f64,
    /// L2 penalty added to the gradient (SGD, Adam) or decoupled decay (AdamW).
    pub weight_decay: f64,
    /// Element type of the parameters.
    pub params: DType,
    /// Element type of the optimizer's state (momentum, first and second moments).
    pub state: DType,
}

/// The kernels an optimizer needs: what changes the generated code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OptKind {
    /// SGD without momentum: no state.
    Sgd,
    /// SGD with momentum: one state tensor.
    Momentum,
    /// Adam / AdamW: two state tensors.
    Adam,
}

impl OptKind {
    /// Names of the state tensors, as in PyTorch's optimizer state dicts.
    pub fn state_names(self) -> &'static [&'static str] {
        match self {
            OptKind::Sgd => &[],
            OptKind::Momentum => &["momentum_buffer"],
            OptKind::Adam => &["exp_avg", "exp_avg_sq"],
        }
    }
}

impl Optimizer {
    /// Plain SGD (PyTorch's defaults: no momentum, dampening or weight decay).
    pub fn sgd(lr: f64) -> Optimizer {
        Optimizer {
            rule: Rule::Sgd { momentum: 0.0, dampening: 0.0, nesterov: false },
            lr,
            weight_decay: 0.0,
            params: DType::F32,
            state: DType::F32,
        }
    }

    /// Adam with PyTorch's defaults: betas (0.9, 0.999), eps 1e-8, no weight decay.
    pub fn adam(lr: f64) -> Optimizer {
        Optimizer {
            rule: Rule::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8, decoupled: false },
            lr,
            weight_decay: 0.0,
            params: DType::F32,
            state: DType::F32,
        }
    }

    /// AdamW with PyTorch's defaults: betas (0.9, 0.999), eps 1e-8, weight decay 0.01.
    pub fn adamw(lr: f64) -> Optimizer {
        Optimizer {
            rule: Rule::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8, decoupled: true },
            weight_decay: 0.01,
            ..Optimizer::adam(lr)
        }
    }

    /// SGD momentum (ignored by Adam).
    pub fn momentum(mut self, value: f64) -> Optimizer {
        if let Rule::Sgd { momentum, .. } = &mut self.rule {
            *momentum = value;
        }
        self
    }

    /// SGD dampening (ignored by Adam).
    pub fn dampening(mut self, value: f64) -> Optimizer {
        if let Rule::Sgd { dampening, .. } = &mut self.rule {
            *dampening = value;
        }
        self
    }

    /// SGD Nesterov momentum (ignored by Adam).
    pub fn nesterov(mut self, value: bool) -> Optimizer {
        if let Rule::Sgd { nesterov, .. } = &mut self.rule {
            *nesterov = value;
        }
        self
    }

    /// Adam's betas (ignored by SGD).
    pub fn betas(mut self, b1: f64, b2: f64) -> Optimizer {
        if let Rule::Adam { beta1, beta2, .. } = &mut self.rule {
            (*beta1, *beta2) = (b1, b2);
        }
        self
    }

    /// Adam's eps (ignored by SGD).
    pub fn eps(mut self, value: f64) -> Optimizer {
        if let Rule::Adam { eps, .. } = &mut self.rule {
            *eps = value;
        }
        self
    }

    /// Weight decay: an L2 term of the gradient (SGD, Adam) or decoupled decay (AdamW).
    pub fn weight_decay(mut self, value: f64) -> Optimizer {
        self.weight_decay = value;
        self
    }

    /// Element type of the parameters.
    pub fn params_type(mut self, dtype: DType) -> Optimizer {
        self.params = dtype;
        self
    }

    /// Element type of the optimizer's state.
    pub fn state_type(mut self, dtype: DType) -> Optimizer {
        self.state = dtype;
        self
    }

    /// The kernels this optimizer needs.
    pub fn kind(&self) -> OptKind {
        match self.rule {
            Rule::Sgd { momentum, .. } if momentum != 0.0 => OptKind::Momentum,
            Rule::Sgd { .. } => OptKind::Sgd,
            Rule::Adam { .. } => OptKind::Adam,
        }
    }

    /// A short name: `sgd`, `sgd_momentum`, `sgd_nesterov`, `adam` or `adamw`.
    pub fn name(&self) -> &'static str {
        match self.rule {
            Rule::Sgd { nesterov: true, .. } => "sgd_nesterov",
            Rule::Sgd { momentum, .. } if momentum != 0.0 => "sgd_momentum",
            Rule::Sgd { .. } => "sgd",
            Rule::Adam { decoupled: false, .. } => "adam",
            Rule::Adam { decoupled: true, .. } => "adamw",
        }
    }

    /// PyTorch's checks, plus finiteness in f32, the type the GPU computes in (1e300 is finite
    /// in f64 but inf in f32; a nonzero eps that rounds to 0 is refused too); the error names
    /// the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, problem: String| Err(Error::InvalidConfig { field, problem });
        let finite_nonneg = |x: f64| x.is_finite() && x >= 0.0 && (x as f32).is_finite();
        if !finite_nonneg(self.lr) || self.lr as f32 == f32::INFINITY {
            return bad("optimizer.lr", format!("must be finite and >= 0, got {}", self.lr));
        }
        if !finite_nonneg(self.weight_decay) {
            return bad("optimizer.weight_decay", format!("must be finite and >= 0 in f32, got {}", self.weight_decay));
        }
        match self.rule {
            Rule::Sgd { momentum, dampening, nesterov } => {
                if !finite_nonneg(momentum) {
                    return bad("optimizer.momentum", format!("must be finite and >= 0 in f32, got {momentum}"));
                }
                if !(dampening.is_finite() && ((1.0 - dampening) as f32).is_finite()) {
                    return bad(
                        "optimizer.dampening",
                        format!("must be finite in f32 (as 1 - dampening), got {dampening}"),
                    );
                }
                if nesterov && (momentum <= 0.0 || dampening != 0.0) {
                    return bad("optimizer.nesterov", "needs momentum > 0 and dampening = 0".into());
                }
            }
            Rule::Adam { beta1, beta2, eps, .. } => {
                for (field, beta) in [("optimizer.beta1", beta1), ("optimizer.beta2", beta2)] {
                    if !(0.0..1.0).contains(&beta) {
                        return bad(field, format!("must be in [0, 1), got {beta}"));
                    }
                }
                if !finite_nonneg(eps) {
                    return bad("optimizer.eps", format!("must be finite and >= 0 in f32, got {eps}"));
                }
                if eps > 0.0 && eps as f32 == 0.0 {
                    return bad("optimizer.eps", format!("{eps} underflows f32 to 0"));
                }
            }
        }
        Ok(())
    }

    /// Bytes the optimizer adds per element when fused into the direction pass: read and
    /// write the parameters and each state tensor (`2p + 2s` per tensor).
    pub fn fused_bytes_per_element(&self) -> u64 {
        let (p, s) = (self.params.size(), self.state.size());
        2 * p + 2 * s * self.kind().state_names().len() as u64
    }

    /// Bytes a separate optimizer kernel moves per element: as fused, plus reading the
    /// direction (of `direction_size` bytes per element).
    pub fn separate_bytes_per_element(&self, direction_size: u64) -> u64 {
        self.fused_bytes_per_element() + direction_size
    }

    pub(crate) fn gpu_constants(&self) -> [f32; 12] {
        let mut c = [0f32; 12];
        let log = |beta: f64| if beta > 0.0 { beta.ln().max(-100.0) as f32 } else { -100.0 };
        match self.rule {
            Rule::Sgd { momentum, dampening, nesterov } => {
                c[0] = momentum as f32;
                c[1] = (1.0 - dampening) as f32;
                c[2] = if nesterov { 1.0 } else { 0.0 };
                c[3] = self.weight_decay as f32;
            }
            Rule::Adam { beta1, beta2, eps, decoupled } => {
                if decoupled {
                    c[4] = self.weight_decay as f32;
                } else {
                    c[3] = self.weight_decay as f32;
                }
                c[5] = (1.0 - beta1) as f32;
                c[6] = beta2 as f32;
                c[7] = (1.0 - beta2) as f32;
                c[8] = log(beta1);
                c[9] = log(beta2);
                c[10] = eps as f32;
            }
        }
        c
    }
}
