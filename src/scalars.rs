//! The scalars a step's finalize stage leaves on the GPU (ratios, dot products, norms, the
//! guard's decision) and how they decode. The state owns the block; [`crate::diagnostics`]
//! reads it back without stalling.

/// Size of the `Scalars` block in `shaders/bindings.wgsl`.
pub const SCALARS_BYTES: u64 = 48;

/// Most ratios a hierarchy's step reports: k (k + 1) / 2 for k = `MAX_LEVELS` = 8.
pub const MAX_LEVEL_RATIOS: usize = 36;

/// Bytes of the largest scalars block (a hierarchy of 8: 9 + 8 coefficients and 36 ratios
/// after the common block), the most a diagnostics copy moves.
pub const MAX_SCALARS_BYTES: u64 = SCALARS_BYTES + 4 * (9 + 8 + MAX_LEVEL_RATIOS as u64) + 12;

/// The scalars of one step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepDiagnostics {
    /// The step's index (0 for the first step the state recorded).
    pub step: u64,
    /// Projection ratio against the main EMA, after the method's cap.
    pub ratio: f32,
    /// Projection ratio against the aux EMA (PCGrad), after the cap.
    pub ratio_aux: f32,
    /// `<e, g_aux>`.
    pub dot_ema_aux: f32,
    /// `|e|^2`.
    pub ema_sq_norm: f32,
    /// `<a, g_main>` (PCGrad).
    pub dot_aux_ema_main: f32,
    /// `|a|^2` (PCGrad).
    pub aux_ema_sq_norm: f32,
    /// `|g_main|^2` (with the guard or `diagnostics` on; else 0).
    pub main_sq_norm: f32,
    /// `|g_aux|^2` (likewise).
    pub aux_sq_norm: f32,
    /// `<g_main, g_aux>` (likewise).
    pub dot_main_aux: f32,
    /// Gradient elements that were inf or NaN (with the guard or `diagnostics` on).
    pub non_finite: f32,
    /// Whether the guard skipped this step.
    pub skipped: bool,
    /// Steps skipped so far, this one included.
    pub skipped_steps: u32,
    /// A hierarchy's aux losses (k; 0 for the other methods).
    pub levels: u8,
    /// A hierarchy's ratios `<g_i, u_j> / (<u_j, u_j> + eps)`, row by row (i = 1..k, j < i);
    /// [`StepDiagnostics::level_ratios`] splits them.
    pub level_ratio_values: [f32; MAX_LEVEL_RATIOS],
}

impl StepDiagnostics {
    /// Decodes the 12 words of the `Scalars` block, and for a hierarchy of `levels` aux
    /// losses (0 for the other methods) the k + 1 + k coefficients and the ratios after them.
    pub(crate) fn from_level_words(step: u64, words: &[u32], levels: u8) -> StepDiagnostics {
        let f = |i: usize| f32::from_bits(words[i]);
        let k = levels as usize;
        let mut level_ratio_values = [0.0; MAX_LEVEL_RATIOS];
        let first = 12 + 2 * k + 1;
        for (n, value) in level_ratio_values.iter_mut().take(k * (k + 1) / 2).enumerate() {
            *value = words.get(first + n).map_or(f32::NAN, |w| f32::from_bits(*w));
        }
        StepDiagnostics {
            levels,
            level_ratio_values,
            step,
            ratio: f(0),
            ratio_aux: f(1),
            skipped: words[2] != 0,
            skipped_steps: words[3],
            dot_ema_aux: f(4),
            ema_sq_norm: f(5),
            dot_aux_ema_main: f(6),
            aux_ema_sq_norm: f(7),
            main_sq_norm: f(8),
            aux_sq_norm: f(9),
            dot_main_aux: f(10),
            non_finite: f(11),
        }
    }

    /// A hierarchy's ratios: row i - 1 holds `<g_i, u_j> / (<u_j, u_j> + eps)` for j < i.
    pub fn level_ratios(&self) -> Vec<Vec<f32>> {
        let mut at = 0;
        (1..=self.levels as usize)
            .map(|i| {
                let row = self.level_ratio_values[at..at + i].to_vec();
                at += i;
                row
            })
            .collect()
    }

    /// `cos(g_main, g_aux)`, or NaN when a norm is 0 or was not computed.
    pub fn cosine(&self) -> f32 {
        let denominator = (self.main_sq_norm as f64 * self.aux_sq_norm as f64).sqrt();
        if denominator > 0.0 {
            (self.dot_main_aux as f64 / denominator) as f32
        } else {
            f32::NAN
        }
    }
}
