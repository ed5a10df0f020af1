//! One error type for every fallible call. Each variant names what was wrong and where,
//! so a user can fix their input without reading the library's source.

use crate::layout::Role;

/// Everything the library can refuse or fail at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is outside its domain.
    #[error("invalid config: `{field}` {problem}")]
    InvalidConfig { field: &'static str, problem: String },

    /// The leaf layout itself is unusable.
    #[error("invalid layout: {0}")]
    InvalidLayout(String),

    /// Per-leaf input does not have one entry per leaf of the layout.
    #[error("{role}: expected one entry per leaf ({expected} leaves), got {got}")]
    LeafCount { role: Role, expected: usize, got: usize },

    /// A leaf's length differs from the layout's.
    #[error("leaf `{leaf}` ({role}): layout says {expected} elements, got {got}")]
    LeafLength { leaf: String, role: Role, expected: u64, got: u64 },

    /// A leaf's element type is not the one the config gives its role.
    #[error("leaf `{leaf}` ({role}): element type {got}, but the config stores this role as {expected}")]
    WrongType { leaf: String, role: Role, expected: crate::dtype::DType, got: crate::dtype::DType },

    /// A buffer lacks a usage flag the library needs.
    #[error("leaf `{leaf}` ({role}): buffer usage {actual:?} lacks {missing:?}")]
    MissingUsage { leaf: String, role: Role, actual: wgpu::BufferUsages, missing: wgpu::BufferUsages },

    /// A byte offset is not a multiple of what the element type needs.
    #[error("leaf `{leaf}` ({role}): byte offset {offset} is not a multiple of {alignment}")]
    MisalignedOffset { leaf: String, role: Role, offset: u64, alignment: u64 },

    /// A leaf's byte range runs past the end of its buffer.
    #[error("leaf `{leaf}` ({role}): bytes {start}..{end} exceed the buffer's {buffer_size} bytes")]
    OutOfRange { leaf: String, role: Role, start: u64, end: u64, buffer_size: u64 },

    /// An output range overlaps another range the same step reads or writes.
    #[error("leaf `{leaf}` (output) overlaps leaf `{other}` ({other_role}) in the same buffer")]
    OverlappingOutput { leaf: String, other: String, other_role: Role },

    /// A leaf, pool or state does not fit the device's limits even after chunking.
    #[error("{what} needs {needed} bytes but the device allows at most {limit} (`{limit_name}`)")]
    ExceedsLimit { what: String, needed: u64, limit: u64, limit_name: &'static str },

    /// Bindings, pools or data prepared for one state were handed to another.
    #[error("{0}")]
    Mismatch(String),

    /// The method has no such EMA (for example the aux EMA of `bloop`).
    #[error("method `{method}` keeps no {role} EMA")]
    NoSuchEma { method: &'static str, role: &'static str },

    /// No GPU adapter could be found.
    #[error("no GPU adapter found{detail}. {hint}")]
    NoAdapter { detail: String, hint: &'static str },

    /// The adapter refused the device request.
    #[error("requesting a device failed: {0}")]
    RequestDevice(#[from] wgpu::RequestDeviceError),

    /// wgpu reported an error (validation, out of memory, internal) inside one of our calls.
    #[error("GPU error while {during}: {message}")]
    Gpu { during: &'static str, message: String },

    /// A checkpoint could not be read, or does not fit the state.
    #[error("checkpoint: {0}")]
    Checkpoint(String),

    /// The device ran out of memory.
    #[error("the GPU ran out of memory while {during}")]
    OutOfMemory { during: &'static str },

    /// The device was lost (driver reset, `Device::destroy`, unplugged GPU); make a new one.
    #[error("the GPU device was lost: {0}")]
    DeviceLost(String),

    /// Mapping a buffer for readback failed (device lost, or the buffer was in use).
    #[error("reading back from the GPU failed: {0}")]
    Readback(String),

    /// A collective operation between ranks failed (a peer left, the transport broke).
    #[error("collective operation `{operation}` failed: {message}")]
    Collective { operation: &'static str, message: String },

    /// The ranks of a sharded step disagree: configs, layouts or leaf ownership differ.
    #[error("rank {rank} of {size}: {detail}")]
    ShardMismatch { rank: usize, size: usize, detail: String },

    /// The phases of a sharded step were called out of order.
    #[error("sharded step: {0}")]
    StepOrder(&'static str),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The hint printed when there is no adapter at all: CI machines and containers usually have
/// no GPU, and Mesa's CPU Vulkan driver is the easiest way to get a correct (slow) one.
pub(crate) const NO_ADAPTER_HINT: &str = "Install a Vulkan driver; without a GPU, Mesa's \
CPU driver lavapipe works (Debian/Ubuntu: `apt-get install mesa-vulkan-drivers libvulkan1`). \
WGPU_BACKEND and WGPU_ADAPTER_NAME select among several adapters.";
