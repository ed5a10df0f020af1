//! Element types of the gradients, the output and the averages. All arithmetic and every
//! accumulation is f32 whatever the storage; 16-bit values are widened on load and rounded to
//! nearest even on store.

use std::fmt;

/// How one role's elements are stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit IEEE float.
    #[default]
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16: the top half of an f32.
    Bf16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::Bf16 => 2,
        }
    }

    /// The lowercase name (`f32`, `f16`, `bf16`).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::Bf16 => "bf16",
        }
    }

    /// The type named `name`, if any.
    pub fn from_name(name: &str) -> Option<DType> {
        [DType::F32, DType::F16, DType::Bf16].into_iter().find(|d| d.name() == name)
    }

    /// `value` after a round trip through this type (round to nearest even).
    pub fn round(self, value: f32) -> f32 {
        match self {
            DType::F32 => value,
            DType::F16 => half::f16::from_f32(value).to_f32(),
            DType::Bf16 => half::bf16::from_f32(value).to_f32(),
        }
    }

    /// Little-endian bytes of `values` in this type.
    pub fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            DType::F32 => bytemuck::cast_slice(values).to_vec(),
            DType::F16 => values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
            DType::Bf16 => values.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(),
        }
    }

    /// Values of little-endian bytes of this type.
    pub fn decode(self, bytes: &[u8]) -> Vec<f32> {
        match self {
            DType::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            DType::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            DType::Bf16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The element type of each role: the two gradients share one; the output has its own; the
/// averages are f32 or the gradients' type (half the memory).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ElementTypes {
    /// Type of the main and aux gradients.
    pub gradients: DType,
    /// Type of the output direction.
    pub output: DType,
    /// Type of the averages.
    pub ema: DType,
}

impl ElementTypes {
    /// Gradients and output in `dtype`, averages in f32.
    pub fn gradients_and_output(dtype: DType) -> ElementTypes {
        ElementTypes { gradients: dtype, output: dtype, ema: DType::F32 }
    }

    /// In place, the direction overwrites the main gradient, so it must be stored in the
    /// gradients' type.
    pub(crate) fn check_in_place(&self) -> crate::Result<()> {
        if self.output == self.gradients {
            return Ok(());
        }
        Err(crate::Error::InvalidConfig {
            field: "types.output",
            problem: format!(
                "in place needs the output in the gradients' type ({}), got {}",
                self.gradients, self.output
            ),
        })
    }

    /// Everything in `dtype`, the averages included.
    pub fn all(dtype: DType) -> ElementTypes {
        ElementTypes { gradients: dtype, output: dtype, ema: dtype }
    }
}
