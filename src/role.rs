//! The parts a buffer can play in a step. Errors name them, so this sits at the bottom of the
//! crate with the error type.

use std::fmt;

/// The part a buffer plays in a step; errors use it to say which buffer is wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The main loss's gradient.
    MainGrad,
    /// The auxiliary loss's gradient.
    AuxGrad,
    /// The direction a step writes.
    Output,
    /// The average of the main gradient.
    MainEma,
    /// The average of the aux gradient (`pcgrad`).
    AuxEma,
    /// The parameters an optimizer updates.
    Params,
    /// The optimizer's state (momentum, moments).
    OptimizerState,
    /// The gradient of loss i of a hierarchy (0 is the main loss).
    Gradient(usize),
    /// The average of loss j of a hierarchy.
    LevelEma(usize),
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::MainGrad => "main gradient",
            Role::AuxGrad => "aux gradient",
            Role::Output => "output",
            Role::MainEma => "main EMA",
            Role::AuxEma => "aux EMA",
            Role::Params => "params",
            Role::OptimizerState => "optimizer state",
            Role::Gradient(i) => return write!(f, "gradient of loss {i}"),
            Role::LevelEma(j) => return write!(f, "EMA of loss {j}"),
        })
    }
}
