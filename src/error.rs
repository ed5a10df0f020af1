//! One error type for every fallible call. Each variant names what was wrong and where,
//! so a user can fix their input without reading the library's source.

use crate::role::Role;

/// Everything the library can refuse or fail at.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is outside its domain.
    #[error("invalid config: `{field}` {problem}")]
    InvalidConfig {
        /// The config field.
        field: &'static str,
        /// What is wrong with its value.
        problem: String,
    },

    /// The leaf layout itself is unusable.
    #[error("invalid layout: {0}")]
    InvalidLayout(String),

    /// Per-leaf input does not have one entry per leaf of the layout.
    #[error("{role}: expected one entry per leaf ({expected} leaves), got {got}")]
    LeafCount {
        /// The part the buffer plays.
        role: Role,
        /// What the layout or config says.
        expected: usize,
        /// What was handed in.
        got: usize,
    },

    /// A leaf's length differs from the layout's.
    #[error("leaf `{leaf}` ({role}): layout says {expected} elements, got {got}")]
    LeafLength {
        /// The leaf's name.
        leaf: String,
        /// The part the buffer plays.
        role: Role,
        /// What the layout or config says.
        expected: u64,
        /// What was handed in.
        got: u64,
    },

    /// A host value handed in as an initial average is inf or NaN.
    #[error("leaf `{leaf}` ({role}): element {index} is {value}; initial values must be finite")]
    NonFiniteValue {
        /// The leaf's name.
        leaf: String,
        /// The part the buffer plays.
        role: Role,
        /// The element's index in the leaf.
        index: u64,
        /// The value.
        value: f32,
    },

    /// A leaf's element type is not the one the config gives its role.
    #[error("leaf `{leaf}` ({role}): element type {got}, but the config stores this role as {expected}")]
    WrongType {
        /// The leaf's name.
        leaf: String,
        /// The part the buffer plays.
        role: Role,
        /// What the layout or config says.
        expected: crate::dtype::DType,
        /// What was handed in.
        got: crate::dtype::DType,
    },

    /// A buffer lacks a usage flag the library needs.
    #[error("leaf `{leaf}` ({role}): buffer usage {actual:?} lacks {missing:?}")]
    MissingUsage {
        /// The leaf's name.
        leaf: String,
        /// The part the buffer plays.
        role: Role,
        /// The buffer's usages.
        actual: wgpu::BufferUsages,
        /// The usages it lacks.
        missing: wgpu::BufferUsages,
    },

    /// A byte offset is not a multiple of what the element type needs.
    #[error("leaf `{leaf}` ({role}): byte offset {offset} is not a multiple of {alignment}")]
    MisalignedOffset {
        /// The leaf's name.
        leaf: String,
        /// The part the buffer plays.
        role: Role,
        /// The byte offset given.
        offset: u64,
        /// The alignment in bytes it needs.
        alignment: u64,
    },

    /// A leaf's byte range runs past the end of its buffer.
    #[error("leaf `{leaf}` ({role}): bytes {start}..{end} exceed the buffer's {buffer_size} bytes")]
    OutOfRange {
        /// The leaf's name.
        leaf: String,
        /// The part the buffer plays.
        role: Role,
        /// First byte of the range.
        start: u64,
        /// One past its last byte.
        end: u64,
        /// The buffer's size in bytes.
        buffer_size: u64,
    },

    /// An output range overlaps another range the same step reads or writes.
    #[error("leaf `{leaf}` (output) overlaps leaf `{other}` ({other_role}) in the same buffer")]
    OverlappingOutput {
        /// The leaf's name.
        leaf: String,
        /// The leaf it overlaps.
        other: String,
        /// That leaf's role.
        other_role: Role,
    },

    /// A leaf, pool or state does not fit the device's limits even after chunking.
    #[error("{what} needs {needed} bytes but the device allows at most {limit} (`{limit_name}`)")]
    ExceedsLimit {
        /// What does not fit.
        what: String,
        /// Bytes it needs.
        needed: u64,
        /// Bytes the device allows.
        limit: u64,
        /// The `wgpu::Limits` field.
        limit_name: &'static str,
    },

    /// Bindings, pools or data prepared for one state were handed to another.
    #[error("{0}")]
    Mismatch(String),

    /// The method has no such EMA (for example the aux EMA of `bloop`).
    #[error("method `{method}` keeps no {role} EMA")]
    NoSuchEma {
        /// The method's name.
        method: &'static str,
        /// The part the buffer plays.
        role: &'static str,
    },

    /// No GPU adapter could be found.
    #[error("no GPU adapter found{detail}. {hint}")]
    NoAdapter {
        /// What wgpu said.
        detail: String,
        /// How to get an adapter.
        hint: &'static str,
    },

    /// The adapter refused the device request.
    #[error("requesting a device failed: {0}")]
    RequestDevice(#[from] wgpu::RequestDeviceError),

    /// wgpu reported an error (validation, out of memory, internal) inside one of our calls.
    #[error("GPU error while {during}: {message}")]
    Gpu {
        /// What the library was doing.
        during: &'static str,
        /// wgpu's message.
        message: String,
    },

    /// A checkpoint could not be read, or does not fit the state.
    #[error("checkpoint: {0}")]
    Checkpoint(String),

    /// The device ran out of memory.
    #[error("the GPU ran out of memory while {during}")]
    OutOfMemory {
        /// What the library was doing.
        during: &'static str,
    },

    /// The device was lost (driver reset, `Device::destroy`, unplugged GPU); make a new one.
    #[error("the GPU device was lost: {0}")]
    DeviceLost(String),

    /// Mapping a buffer for readback failed (device lost, or the buffer was in use).
    #[error("reading back from the GPU failed: {0}")]
    Readback(String),

    /// A call needs an optimizer the state lacks, or parameters it was not given.
    #[error("optimizer: {0}")]
    Optimizer(String),

    /// A parameter range overlaps another range the same step reads or writes.
    #[error("leaf `{leaf}` (params) overlaps leaf `{other}` ({other_role}) in the same buffer")]
    OverlappingParams {
        /// The leaf's name.
        leaf: String,
        /// The leaf it overlaps.
        other: String,
        /// That leaf's role.
        other_role: Role,
    },

    /// A collective operation between ranks failed (a peer left, the transport broke).
    #[error("collective operation `{operation}` failed: {message}")]
    Collective {
        /// The operation (`all_reduce_sum`, ...).
        operation: &'static str,
        /// What went wrong.
        message: String,
    },

    /// The ranks of a sharded step disagree: configs, layouts or leaf ownership differ.
    #[error("rank {rank} of {size}: {detail}")]
    ShardMismatch {
        /// The rank reporting.
        rank: usize,
        /// How many ranks take part.
        size: usize,
        /// What differs.
        detail: String,
    },

    /// The phases of a sharded step were called out of order.
    #[error("sharded step: {0}")]
    StepOrder(&'static str),

    /// A config needs more of a counted device resource (bindings, buffers per stage) than
    /// the device allows.
    #[error("{what} needs {needed} but the device allows at most {limit} (`{limit_name}`)")]
    ExceedsCount {
        /// What does not fit.
        what: String,
        /// How many it needs.
        needed: u32,
        /// How many the device allows.
        limit: u32,
        /// The `wgpu::Limits` field.
        limit_name: &'static str,
    },

    /// An option asks for something that needs device features the device was not created
    /// with.
    #[error("{what} needs the device features {missing}, which this device lacks")]
    MissingFeatures {
        /// What was asked for.
        what: &'static str,
        /// The `wgpu::Features` missing.
        missing: String,
    },

    /// A leaf index past the layout's leaves (or a loss index past a pool's losses).
    #[error("{what} index {index} is out of range: there are {count}")]
    IndexOutOfRange {
        /// What was indexed (`leaf`, `loss`).
        what: &'static str,
        /// The index given.
        index: usize,
        /// How many there are.
        count: usize,
    },

    /// A finite host value that the role's 16-bit storage type cannot hold (it would be stored
    /// as inf).
    #[error("leaf `{leaf}` ({role}): element {index} is {value}, which overflows {dtype}")]
    Unrepresentable {
        /// The leaf's name.
        leaf: String,
        /// The part the buffer plays.
        role: Role,
        /// The element's index in the leaf.
        index: u64,
        /// The value.
        value: f32,
        /// The storage type.
        dtype: crate::dtype::DType,
    },

    /// A buffer is mapped (for example created with `mapped_at_creation` and not unmapped):
    /// the GPU cannot use it, and the caller's submit would fail.
    #[error("leaf `{leaf}` ({role}): its buffer is mapped; unmap it before binding or recording")]
    BufferMapped {
        /// The leaf's name.
        leaf: String,
        /// The part the buffer plays.
        role: Role,
    },

    /// A buffer was destroyed: the caller's submit would fail on it.
    #[error("leaf `{leaf}` ({role}): its buffer has been destroyed")]
    BufferDestroyed {
        /// The leaf's name.
        leaf: String,
        /// The part the buffer plays.
        role: Role,
    },

    /// A resource of one device was handed to a call working on another.
    #[error("{what} belongs to another device than {other}")]
    OtherDevice {
        /// What was handed in.
        what: &'static str,
        /// What it was to be used with.
        other: &'static str,
    },

    /// The state's checkpoints would not fit the safetensors header limit: there are too many
    /// leaves (or their names are too long) for one file.
    #[error(
        "a checkpoint of {leaves} leaves needs a safetensors header of up to {header_bytes} bytes, \
         over the format's limit of {limit}: too many leaves for a checkpoint (about {per_leaf} bytes each)"
    )]
    CheckpointHeader {
        /// The layout's leaves.
        leaves: usize,
        /// The header bytes a checkpoint of the state may need.
        header_bytes: u64,
        /// safetensors' limit.
        limit: u64,
        /// Header bytes per leaf, on average.
        per_leaf: u64,
    },

    /// A list given per loss of a hierarchy (gradients, initial averages) does not have one
    /// entry per loss.
    #[error("{what}: expected {expected} entries, one per loss, got {got}")]
    LevelCount {
        /// What the list is.
        what: &'static str,
        /// What the config says.
        expected: usize,
        /// What was handed in.
        got: usize,
    },
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The hint printed when there is no adapter at all: CI machines and containers usually have
/// no GPU, and Mesa's CPU Vulkan driver is the easiest way to get a correct (slow) one.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) const NO_ADAPTER_HINT: &str = "Install a Vulkan driver; without a GPU, Mesa's \
CPU driver lavapipe works (Debian/Ubuntu: `apt-get install mesa-vulkan-drivers libvulkan1`). \
WGPU_BACKEND and WGPU_ADAPTER_NAME select among several adapters.";

/// On wasm the only back-end is the host's WebGPU, where no driver can be installed from here:
/// the hint says where WebGPU is off instead.
#[cfg(target_arch = "wasm32")]
pub(crate) const NO_ADAPTER_HINT: &str = "The host's WebGPU offered no adapter: a browser may \
have WebGPU off or the GPU blocklisted (on Linux, Chromium needs --enable-unsafe-webgpu), and \
Node's `webgpu` package needs a driver that its back-end supports.";
