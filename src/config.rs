//! What a step computes: the method, its constants, and where the averages start.
//!
//! Values are kept in f64 so the CPU reference sees exactly what the user wrote; the GPU gets
//! them rounded to f32 once, when a state uploads its constants.

use crate::dtype::{DType, ElementTypes};
use crate::error::{Error, Result};
use crate::layout::LeafBuffer;
use crate::optimizer::Optimizer;

/// The gradient-combining methods of the paper.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// `g_main + lambda * (g_aux - r * e)` with `r = <e, g_aux> / (<e, e> + eps)`.
    Bloop,
    /// As `Bloop`, with `r` clipped from above at `1 / lambda`.
    DynamicBarrier,
    /// PCGrad with EMAs of both gradients; each side only projects away conflict (`r <= 0`).
    PcGrad,
    /// `g_main + lambda * g_aux`; keeps no averages.
    Mixed,
    /// A hierarchy of k >= 1 auxiliary losses in priority order ([`Config::lambdas`]): each
    /// lower-priority gradient acts only orthogonally (Gram-Schmidt) to the averaged gradients
    /// of every loss above it. One average per non-last loss; k = 1 is `Bloop`.
    Hierarchy,
}

/// Most auxiliary losses a [`Method::Hierarchy`] config holds (through a pool, every level fits
/// 6 storage buffers per stage; the user's buffers bind one more per level).
pub const MAX_LEVELS: usize = 8;

impl Method {
    /// The method's name as configs and golden cases spell it (`bloop`, `dynamic_barrier`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Method::Bloop => "bloop",
            Method::DynamicBarrier => "dynamic_barrier",
            Method::PcGrad => "pcgrad",
            Method::Mixed => "mixed",
            Method::Hierarchy => "hierarchy",
        }
    }

    /// Parses the names used by the golden cases and [`Method::name`].
    pub fn from_name(name: &str) -> Option<Method> {
        [Method::Bloop, Method::DynamicBarrier, Method::PcGrad, Method::Mixed, Method::Hierarchy]
            .into_iter()
            .find(|m| m.name() == name)
    }

    /// Whether the method keeps an EMA of the main gradient.
    pub fn has_main_ema(self) -> bool {
        self != Method::Mixed
    }

    /// Whether the method keeps an EMA of the auxiliary gradient.
    pub fn has_aux_ema(self) -> bool {
        self == Method::PcGrad
    }
}

/// When a step projects relative to when it updates the averages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Order {
    /// The reference code's order: the averages take the current gradient first and the
    /// projection uses the new averages.
    #[default]
    UpdateFirst,
    /// The paper's Algorithm 1: the projection uses the averages of the previous steps, then
    /// the averages take the current gradient (the direction does not depend on the current
    /// batch through the average). `mixed` ignores it.
    ProjectFirst,
}

impl Order {
    /// The name configs, checkpoints and golden cases use (`update_first`, `project_first`).
    pub fn name(self) -> &'static str {
        match self {
            Order::UpdateFirst => "update_first",
            Order::ProjectFirst => "project_first",
        }
    }

    /// Parses [`Order::name`].
    pub fn from_name(name: &str) -> Option<Order> {
        [Order::UpdateFirst, Order::ProjectFirst].into_iter().find(|o| o.name() == name)
    }
}

/// One step's constants. Build with [`Config::new`] and the setters, then the state validates.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Config {
    /// Which combination rule a step applies.
    pub method: Method,
    /// EMA rate `b` in `e <- e + b * (g - e)`, in [0, 1].
    pub ema: f64,
    /// Weight of the auxiliary gradient, finite and >= 0.
    pub lambda: f64,
    /// Added to `<e, e>` before dividing, finite and > 0.
    pub eps: f64,
    /// Scale the direction by `1 / (1 + lambda)`.
    pub rescale: bool,
    /// Fold the projection into the main gradient's coefficient (`bloop`, `dynamic_barrier`).
    pub ratio_only: bool,
    /// Skip steps whose gradients hold an inf or NaN (or whose sums overflow): the output is
    /// written as zeros, the averages stay bit for bit as they were, and the state's
    /// skipped-steps counter on the GPU goes up. On by default.
    pub guard: bool,
    /// Also compute |g_main|^2, |g_aux|^2 and <g_main, g_aux> for [`crate::diagnostics`]
    /// (the guard computes them anyway).
    pub diagnostics: bool,
    /// How gradients, output and averages are stored (all f32 by default).
    pub types: ElementTypes,
    /// An optimizer the direction pass applies to the parameters (none by default).
    pub optimizer: Option<Optimizer>,
    /// Whether the projection uses the averages before or after this step's update.
    pub order: Order,
    /// Weights of the auxiliary losses of a hierarchy, in priority order (the first
    /// [`Config::levels`] entries are used); set with [`Config::lambdas`].
    pub lambdas: [f64; MAX_LEVELS],
    /// How many auxiliary losses a hierarchy has (k); 0 for the other methods.
    pub levels: usize,
}

impl Config {
    /// The paper's defaults: ema 0.1, lambda 0.1, eps 1e-7, no rescale, full projection.
    pub fn new(method: Method) -> Config {
        Config {
            method,
            ema: 0.1,
            lambda: 0.1,
            eps: 1e-7,
            rescale: false,
            ratio_only: false,
            guard: true,
            diagnostics: false,
            types: ElementTypes::default(),
            optimizer: None,
            order: Order::UpdateFirst,
            lambdas: [0.0; MAX_LEVELS],
            levels: 0,
        }
    }

    /// A [`Method::Hierarchy`] config with these weights (k = `lambdas.len()`), otherwise the
    /// defaults of [`Config::new`].
    pub fn hierarchy(lambdas: &[f64]) -> Config {
        Config::new(Method::Hierarchy).lambdas(lambdas)
    }

    /// Sets the weights `l_1 .. l_k` of a hierarchy's auxiliary losses, in priority order; k is
    /// their count (1 to [`MAX_LEVELS`], checked by [`Config::validate`]).
    pub fn lambdas(mut self, lambdas: &[f64]) -> Config {
        self.lambdas = [0.0; MAX_LEVELS];
        for (slot, &l) in self.lambdas.iter_mut().zip(lambdas) {
            *slot = l;
        }
        self.levels = lambdas.len();
        self
    }

    /// The hierarchy's weights (empty for the other methods).
    pub fn level_lambdas(&self) -> &[f64] {
        &self.lambdas[..self.levels.min(MAX_LEVELS)]
    }

    /// Fuses `optimizer` into the step: the direction pass updates the parameters.
    pub fn optimizer(mut self, optimizer: Optimizer) -> Config {
        self.optimizer = Some(optimizer);
        self
    }

    /// Sets the EMA rate `b` in `e <- e + b (g - e)`, in (0, 1].
    pub fn ema(mut self, ema: f64) -> Config {
        self.ema = ema;
        self
    }

    /// Sets the weight `lambda` of the auxiliary gradient (finite, >= 0).
    pub fn lambda(mut self, lambda: f64) -> Config {
        self.lambda = lambda;
        self
    }

    /// Sets `eps`, added to `<e, e>` in the projection ratio's denominator (finite, >= 0).
    pub fn eps(mut self, eps: f64) -> Config {
        self.eps = eps;
        self
    }

    /// Scales the direction by `1 / (1 + lambda)`.
    pub fn rescale(mut self, rescale: bool) -> Config {
        self.rescale = rescale;
        self
    }

    /// Applies the projection as a scalar on `g_main` instead of subtracting `r e` from `g_aux`.
    pub fn ratio_only(mut self, ratio_only: bool) -> Config {
        self.ratio_only = ratio_only;
        self
    }

    /// Skips steps whose gradients hold inf or NaN (on by default).
    pub fn guard(mut self, guard: bool) -> Config {
        self.guard = guard;
        self
    }

    /// Computes gradient norms and `<g_main, g_aux>` for diagnostics even without the guard.
    pub fn diagnostics(mut self, diagnostics: bool) -> Config {
        self.diagnostics = diagnostics;
        self
    }

    /// Sets the element types of gradients, output and averages.
    pub fn types(mut self, types: ElementTypes) -> Config {
        self.types = types;
        self
    }

    /// Sets the order of projecting and averaging ([`Order::ProjectFirst`] is the paper's
    /// Algorithm 1). Bytes per element do not change.
    pub fn order(mut self, order: Order) -> Config {
        self.order = order;
        self
    }

    /// Whether the kernels project on the averages of the previous steps.
    pub(crate) fn project_first(&self) -> bool {
        self.order == Order::ProjectFirst && self.method != Method::Mixed
    }

    /// Checks every field; the error names the first one out of its domain.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, problem: String| Err(Error::InvalidConfig { field, problem });
        if !(0.0..=1.0).contains(&self.ema) {
            return bad("ema", format!("must be in [0, 1], got {}", self.ema));
        }
        if !self.lambda.is_finite() || self.lambda < 0.0 {
            return bad("lambda", format!("must be finite and >= 0, got {}", self.lambda));
        }
        if !self.eps.is_finite() || self.eps <= 0.0 {
            return bad("eps", format!("must be finite and > 0, got {}", self.eps));
        }
        if self.method == Method::Hierarchy {
            if self.levels == 0 || self.levels > MAX_LEVELS {
                return bad("lambdas", format!("must hold 1 to {MAX_LEVELS} weights, got {}", self.levels));
            }
            if let Some(l) = self.level_lambdas().iter().find(|l| !l.is_finite() || **l < 0.0) {
                return bad("lambdas", format!("must be finite and >= 0, got {l}"));
            }
            let total: f64 = self.level_lambdas().iter().sum();
            if !((total as f32).is_finite() && (self.scale() as f32) > 0.0) {
                return bad("lambdas", format!("sum {total} overflows f32"));
            }
        } else if self.levels != 0 {
            return bad("lambdas", format!("apply to hierarchy only, not {}", self.method.name()));
        }
        if self.ratio_only && !matches!(self.method, Method::Bloop | Method::DynamicBarrier) {
            return bad("ratio_only", format!("applies to bloop and dynamic_barrier only, not {}", self.method.name()));
        }
        let ema = self.types.ema;
        if ema != DType::F32 && ema != self.types.gradients {
            return bad(
                "types.ema",
                format!("must be f32 or the gradients' type ({}), got {ema}", self.types.gradients),
            );
        }
        if let Some(optimizer) = &self.optimizer {
            optimizer.validate()?;
            // The hierarchy's stages are generated per k and have no optimizer stage yet.
            if self.method == Method::Hierarchy {
                return bad(
                    "optimizer",
                    "cannot be fused into a hierarchy step yet; step the parameters with the direction".into(),
                );
            }
        }
        // The f32 constants the GPU uses must stay finite too (lambda = 1e300 is finite in f64),
        // and eps must stay > 0: each is named as the field it comes from.
        let c = self.gpu_constants();
        if !(c.lambda.is_finite() && c.scale.is_finite() && c.scale > 0.0) {
            return bad("lambda", format!("{} overflows f32", self.lambda));
        }
        if !c.eps.is_finite() {
            return bad("eps", format!("{} overflows f32", self.eps));
        }
        if c.eps <= 0.0 {
            return bad(
                "eps",
                format!("{} underflows f32 (the GPU computes in f32; the least is about 1.4e-45)", self.eps),
            );
        }
        Ok(())
    }

    /// Whether the kernels compute the gradients' norms and non-finite count.
    pub(crate) fn extras(&self) -> bool {
        self.guard || self.diagnostics
    }

    /// `1 / (1 + lambda)` with `rescale` (`1 / (1 + sum l_i)` for a hierarchy), else 1.
    pub fn scale(&self) -> f64 {
        if self.rescale && self.method == Method::Hierarchy {
            1.0 / (1.0 + self.level_lambdas().iter().sum::<f64>())
        } else if self.rescale {
            1.0 / (1.0 + self.lambda)
        } else {
            1.0
        }
    }

    /// Upper bound applied to the projection ratio: none for `bloop`, `1 / lambda` for the
    /// dynamic barrier, 0 for PCGrad (which only removes conflicting components).
    pub fn ratio_cap(&self) -> Option<f64> {
        match self.method {
            Method::DynamicBarrier if self.lambda > 0.0 => Some(1.0 / self.lambda),
            Method::PcGrad => Some(0.0),
            _ => None,
        }
    }

    /// The fewest bytes a step must move per element (reads plus writes of gradients,
    /// averages and output). All in f32: 32 for `bloop` / `dynamic_barrier`, 28 with
    /// `ratio_only` (32 with the guard, which may write the average only once the step is
    /// known to be finite), 44 for `pcgrad`, 12 for `mixed`. With g, e, o the bytes of a
    /// gradient, average and output element: `4g + 3e + o`, `4g + 2e + o`, `4g + 6e + o` and
    /// `2g + o`. The fused kernels move exactly this much.
    ///
    /// A hierarchy of k auxiliary losses moves `(2k + 2) g + 3k e + o`, `20k + 12` in f32:
    /// the first pass reads the k + 1 gradients and the k averages, the second reads them
    /// again and writes the k averages and the output.
    pub fn bytes_per_element(&self) -> u64 {
        let (g, e, o) = (self.types.gradients.size(), self.types.ema.size(), self.types.output.size());
        match Kind::of(self) {
            Kind::Project => 4 * g + 3 * e + o,
            Kind::RatioOnly if self.guard => 4 * g + 3 * e + o,
            Kind::RatioOnly => 4 * g + 2 * e + o,
            Kind::PcGrad => 4 * g + 6 * e + o,
            Kind::Mixed => 2 * g + o,
            Kind::Hierarchy(k) => {
                let k = k as u64;
                (2 * k + 2) * g + 3 * k * e + o
            }
        }
    }

    /// Bytes per element of the step with its optimizer fused into the direction pass (the
    /// step's own bytes when there is none): the parameters and each state tensor read and
    /// written, the direction written only with `write_direction`. Mixing with the guard or
    /// diagnostics reads the gradients once more, to know the step is finite before any
    /// parameter is written. All in f32: `bloop` + SGD 36, + momentum 44, + Adam 52.
    pub fn fused_bytes_per_element(&self, write_direction: bool) -> u64 {
        let Some(o) = &self.optimizer else { return self.bytes_per_element() };
        let mut bytes = self.bytes_per_element() + o.fused_bytes_per_element();
        if !write_direction {
            bytes -= self.types.output.size();
        }
        if self.method == Method::Mixed && self.extras() {
            bytes += 2 * self.types.gradients.size();
        }
        bytes
    }

    /// Bytes per element of the step followed by a separate optimizer kernel that reads the
    /// direction: `bloop` + SGD 44, + momentum 52, + Adam 60 in f32.
    pub fn separate_bytes_per_element(&self) -> u64 {
        let Some(o) = &self.optimizer else { return self.bytes_per_element() };
        self.bytes_per_element() + o.separate_bytes_per_element(self.types.output.size())
    }

    pub(crate) fn gpu_constants(&self) -> GpuConstants {
        GpuConstants {
            ema: self.ema as f32,
            lambda: self.lambda as f32,
            scale: self.scale() as f32,
            eps: self.eps as f32,
            // WGSL may assume no infinities at run time, so "no cap" is the largest finite f32.
            ratio_cap: self.ratio_cap().map_or(f32::MAX, |c| c.min(f32::MAX as f64) as f32),
            _pad: [0.0; 3],
            optimizer: self.optimizer.map_or([0.0; 12], |o| o.gpu_constants()),
            lambdas: self.lambdas.map(|l| l as f32),
        }
    }
}

/// The uniform block every kernel reads (`Params` in `shaders/bindings.wgsl`).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct GpuConstants {
    pub ema: f32,
    pub lambda: f32,
    pub scale: f32,
    pub eps: f32,
    pub ratio_cap: f32,
    pub _pad: [f32; 3],
    /// The optimizer's constants (`Params` from `momentum` on; see `Optimizer::gpu_constants`).
    pub optimizer: [f32; 12],
    /// A hierarchy's weights (`Params.lambdas`, two vec4).
    pub lambdas: [f32; MAX_LEVELS],
}

/// Where an EMA starts.
#[derive(Clone, Debug)]
pub enum EmaInit {
    /// All zeros.
    Zeros,
    /// Independent standard normal values from [`crate::rng::normal_leaves`] with this seed:
    /// the same seed gives the same values on every machine.
    Normal {
        /// The seed of the stream.
        seed: u64,
    },
    /// Host values, one vector per leaf.
    Values(Vec<Vec<f32>>),
    /// Copied on the GPU from the user's buffers (for example the first main gradient).
    /// The buffers need `COPY_SRC` usage.
    Buffers(Vec<LeafBuffer>),
}

/// Initial values of the averages a method keeps. Methods without an aux EMA ignore `aux`.
#[derive(Clone, Debug)]
pub struct EmaInits {
    /// Initial value of the main-gradient average.
    pub main: EmaInit,
    /// Initial value of the aux-gradient average (used by `pcgrad` only).
    pub aux: EmaInit,
}

impl EmaInits {
    /// Both averages start from `init`; a `Normal` seed is split so the two differ.
    pub fn both(init: EmaInit) -> EmaInits {
        let aux = match &init {
            EmaInit::Normal { seed } => EmaInit::Normal { seed: crate::rng::derive_seed(*seed, 1) },
            other => other.clone(),
        };
        EmaInits { main: init, aux }
    }

    /// Both averages start at zero.
    pub fn zeros() -> EmaInits {
        EmaInits::both(EmaInit::Zeros)
    }
}

/// The computation a kernel set specialises in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `bloop` and `dynamic_barrier` (they differ only in the ratio cap, a uniform).
    Project,
    /// `bloop` / `dynamic_barrier` with `ratio_only`.
    RatioOnly,
    /// `pcgrad`: projections against both averages.
    PcGrad,
    /// `mixed`: no projection.
    Mixed,
    /// `hierarchy` with this many auxiliary losses.
    Hierarchy(u8),
}

impl Kind {
    /// The kernel family `config` needs.
    pub fn of(config: &Config) -> Kind {
        match config.method {
            Method::Bloop | Method::DynamicBarrier if config.ratio_only => Kind::RatioOnly,
            Method::Bloop | Method::DynamicBarrier => Kind::Project,
            Method::PcGrad => Kind::PcGrad,
            Method::Mixed => Kind::Mixed,
            Method::Hierarchy => Kind::Hierarchy(config.levels.min(MAX_LEVELS) as u8),
        }
    }

    /// Whether this family keeps an average of the main gradient.
    pub fn has_main_ema(self) -> bool {
        self != Kind::Mixed
    }

    /// Whether this family keeps an average of the aux gradient.
    pub fn has_aux_ema(self) -> bool {
        self == Kind::PcGrad
    }
}
