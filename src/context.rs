//! Getting a device: from the environment for scripts and tests, or the user's own.

use crate::error::{Error, Result, NO_ADAPTER_HINT};

/// Optional features the library uses when the adapter has them.
pub const OPTIONAL_FEATURES: wgpu::Features = wgpu::Features::TIMESTAMP_QUERY
    .union(wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS)
    .union(wgpu::Features::SHADER_F16)
    .union(wgpu::Features::SUBGROUP)
    .union(BINDING_ARRAY_FEATURES);

/// The features binding arrays of storage buffers indexed per segment need
/// ([`crate::KernelOptions::binding_arrays`]): arrays of buffers, of storage buffers, and
/// indexing them with values that differ between invocations (narrow segments are walked one
/// per invocation).
pub const BINDING_ARRAY_FEATURES: wgpu::Features = wgpu::Features::BUFFER_BINDING_ARRAY
    .union(wgpu::Features::STORAGE_RESOURCE_BINDING_ARRAY)
    .union(wgpu::Features::SAMPLED_TEXTURE_AND_STORAGE_BUFFER_ARRAY_NON_UNIFORM_INDEXING);

/// An adapter with its device and queue. Every entry point of the library takes a plain
/// `wgpu::Device` / `wgpu::Queue`, so a trainer that already has them never needs this.
#[derive(Clone, Debug)]
pub struct GpuContext {
    /// The wgpu instance the adapter came from.
    pub instance: wgpu::Instance,
    /// The adapter (its name and limits are in `adapter.get_info()`).
    pub adapter: wgpu::Adapter,
    /// The device every state and kernel set of this context uses.
    pub device: wgpu::Device,
    /// The device's queue.
    pub queue: wgpu::Queue,
}

impl GpuContext {
    /// Picks an adapter the way wgpu's examples do: `WGPU_BACKEND` restricts the backends,
    /// `WGPU_ADAPTER_NAME` picks by a case-insensitive substring of the adapter name, else the
    /// default (high-performance if `WGPU_POWER_PREF` says so). Requests the adapter's own
    /// limits and the [`OPTIONAL_FEATURES`] it has. Blocks; [`GpuContext::from_env_async`] is
    /// the form for wasm.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_env() -> Result<GpuContext> {
        pollster::block_on(GpuContext::from_env_async())
    }

    /// [`GpuContext::from_env`] as a future. On wasm the environment is the JavaScript host's
    /// `navigator.gpu`; its adapter's own limits are requested, as natively, rather than
    /// WebGPU's defaults (8 storage buffers per stage where SwiftShader offers 10 in Chromium
    /// and 12 in Node; 128 invocations per workgroup in compatibility mode where Dawn's GL on
    /// llvmpipe has 1024).
    pub async fn from_env_async() -> Result<GpuContext> {
        GpuContext::from_env_with_limits(|limits| limits).await
    }

    /// As [`GpuContext::from_env`], with the adapter's limits passed through `adjust` first
    /// (tests lower `max_storage_buffer_binding_size` this way to exercise chunking).
    pub async fn from_env_with_limits(adjust: impl FnOnce(wgpu::Limits) -> wgpu::Limits) -> Result<GpuContext> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all());
        let adapter = match std::env::var("WGPU_ADAPTER_NAME") {
            Ok(wanted) => {
                let adapters = instance.enumerate_adapters(backends).await;
                let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
                let found =
                    adapters.into_iter().find(|a| a.get_info().name.to_lowercase().contains(&wanted.to_lowercase()));
                found.ok_or_else(|| Error::NoAdapter {
                    detail: format!(" named like WGPU_ADAPTER_NAME={wanted:?} (adapters: {names:?})"),
                    hint: NO_ADAPTER_HINT,
                })?
            }
            Err(_) => instance
                .request_adapter(&wgpu::RequestAdapterOptions {
                    power_preference: wgpu::PowerPreference::from_env().unwrap_or_default(),
                    force_fallback_adapter: false,
                    compatible_surface: None,
                    ..Default::default()
                })
                .await
                .map_err(|e| Error::NoAdapter { detail: format!(" ({e})"), hint: NO_ADAPTER_HINT })?,
        };
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("bloop"),
                required_features: adapter.features() & OPTIONAL_FEATURES,
                required_limits: adjust(adapter.limits()),
                ..Default::default()
            })
            .await?;
        Ok(GpuContext { instance, adapter, device, queue })
    }

    /// "name (backend, device type)" for reports.
    pub fn describe(&self) -> String {
        let info = self.adapter.get_info();
        format!("{} ({:?}, {:?})", info.name, info.backend, info.device_type)
    }
}

/// Runs `f` inside validation and out-of-memory error scopes, turning what wgpu reports into
/// [`Error::Gpu`] instead of the default panic on uncaptured errors.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn gpu_scope<T>(device: &wgpu::Device, during: &'static str, f: impl FnOnce() -> T) -> Result<T> {
    let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let value = f();
    let validation = pollster::block_on(validation.pop());
    let oom = pollster::block_on(oom.pop());
    match validation.or(oom) {
        Some(e) => Err(classify(during, e)),
        None => Ok(value),
    }
}

/// On WebGPU an error scope's result arrives through the JavaScript event loop, which cannot be
/// waited for inside a synchronous call: `f` runs in the caller's scopes instead, and errors
/// reach them or the device's uncaptured-error handler (the wasm conformance runner wraps each
/// case in scopes of its own and awaits them).
#[cfg(target_arch = "wasm32")]
pub(crate) fn gpu_scope<T>(_device: &wgpu::Device, _during: &'static str, f: impl FnOnce() -> T) -> Result<T> {
    Ok(f())
}

/// [`classify`], public for the tests: an out-of-memory report cannot be provoked safely.
#[doc(hidden)]
pub fn classify_for_tests(during: &'static str, error: wgpu::Error) -> Error {
    classify(during, error)
}

/// Out-of-memory gets its own error, so a trainer can free memory and retry.
pub(crate) fn classify(during: &'static str, error: wgpu::Error) -> Error {
    match error {
        wgpu::Error::OutOfMemory { .. } => Error::OutOfMemory { during },
        other => Error::Gpu { during, message: other.to_string() },
    }
}
