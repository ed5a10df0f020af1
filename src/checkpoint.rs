//! Saving and restoring a state as a safetensors file.
//!
//! Tensors: `main_ema/<leaf name>` (and `aux_ema/<leaf name>` for PCGrad, `level_ema<j>/<leaf name>`
//! for a hierarchy's averages e_1 .. e_{k-1}), in the averages'
//! element type (F32, F16 or BF16), with the leaf's shape (or `[len]`). Metadata (all strings):
//! `format` = `bloop-checkpoint`, `version` = `1`, `config` (JSON: method, ema, lambda, eps,
//! rescale, ratio_only, guard, diagnostics, gradients_dtype, output_dtype, ema_dtype, order, lambdas;
//! a file without `order` reads as `update_first`), `steps`,
//! `skipped_steps`, and `layout` (JSON list of `{name, len, shape}`). Python opens it with
//! `safetensors.numpy.load_file(path)`, and `safe_open(path, "np").metadata()` for the rest.
//!
//! With an optimizer, the config's JSON has an `optimizer` object (rule, lr, weight decay,
//! its constants, `params_dtype`, `state_dtype`), the metadata `optimizer_step` (the steps
//! applied) and `learning_rate` (the current one, which a schedule may have changed), and the
//! state tensors are `optimizer/<name>/<leaf name>` in the optimizer's state type, with names
//! as in PyTorch (`momentum_buffer`; `exp_avg`, `exp_avg_sq`). The parameters are not saved:
//! they are the user's.

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::config::{Config, Method, Order};
use crate::dtype::{DType, ElementTypes};
use crate::error::{Error, Result};
use crate::layout::{Layout, Leaf, Role};
use crate::optimizer::{Optimizer, Rule};
use crate::validate;

/// The `format` entry of a checkpoint's metadata.
pub const FORMAT: &str = "bloop-checkpoint";
/// The format version this library writes and reads.
pub const VERSION: &str = "1";
/// The most bytes a safetensors header (the JSON naming every tensor, and the metadata) may
/// have: every reader, Python's included, refuses a larger one. Each leaf takes a few dozen
/// bytes per tensor, so this bounds the leaves a checkpoint can hold; a state whose
/// checkpoint could exceed it is refused when it is made ([`crate::Error::CheckpointHeader`]).
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// The contents of a checkpoint, on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// The configuration of the state that was saved.
    pub config: Config,
    /// The leaves the averages belong to.
    pub layout: Layout,
    /// Steps recorded before the checkpoint.
    pub steps: u64,
    /// Steps the guard had skipped.
    pub skipped_steps: u64,
    /// One vector per leaf (empty for `mixed`).
    pub main_ema: Vec<Vec<f32>>,
    /// One vector per leaf (empty unless `pcgrad`).
    pub aux_ema: Vec<Vec<f32>>,
    /// A hierarchy's averages e_1 .. e_{k-1} (`main_ema` is e_0), tensors `level_ema<j>/<leaf>`;
    /// empty for the other methods.
    pub level_emas: Vec<Vec<Vec<f32>>>,
    /// The optimizer's schedule and state, when the config has one.
    pub optimizer: Option<OptimizerCheckpoint>,
}

/// The optimizer's part of a checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct OptimizerCheckpoint {
    /// The learning rate in the state's buffer when the checkpoint was taken.
    pub learning_rate: f32,
    /// Steps the optimizer had applied (skipped steps excluded).
    pub step: u64,
    /// Per state tensor ([`crate::OptKind::state_names`]), one vector per leaf.
    pub tensors: Vec<Vec<Vec<f32>>>,
}

fn bad(problem: impl Into<String>) -> Error {
    Error::Checkpoint(problem.into())
}

pub(crate) fn config_json(c: &Config) -> Value {
    let mut v = json!({
        "method": c.method.name(), "ema": c.ema, "lambda": c.lambda, "eps": c.eps,
        "rescale": c.rescale, "ratio_only": c.ratio_only, "guard": c.guard, "diagnostics": c.diagnostics,
        "gradients_dtype": c.types.gradients.name(), "output_dtype": c.types.output.name(), "ema_dtype": c.types.ema.name(),
        "order": c.order.name(), "lambdas": c.level_lambdas(),
    });
    if let Some(o) = &c.optimizer {
        v["optimizer"] = optimizer_json(o);
    }
    v
}

fn optimizer_json(o: &Optimizer) -> Value {
    let mut v = json!({
        "lr": o.lr, "weight_decay": o.weight_decay,
        "params_dtype": o.params.name(), "state_dtype": o.state.name(),
    });
    match o.rule {
        Rule::Sgd { momentum, dampening, nesterov } => {
            v["rule"] = json!("sgd");
            v["momentum"] = json!(momentum);
            v["dampening"] = json!(dampening);
            v["nesterov"] = json!(nesterov);
        }
        Rule::Adam { beta1, beta2, eps, decoupled } => {
            v["rule"] = json!(if decoupled { "adamw" } else { "adam" });
            v["beta1"] = json!(beta1);
            v["beta2"] = json!(beta2);
            v["eps"] = json!(eps);
        }
    }
    v
}

fn optimizer_from_json(v: &Value) -> Result<Optimizer> {
    let number =
        |k: &str| v.get(k).and_then(Value::as_f64).ok_or_else(|| bad(format!("optimizer has no number `{k}`")));
    let dtype = |k: &str| {
        let name = v.get(k).and_then(Value::as_str).ok_or_else(|| bad(format!("optimizer has no `{k}`")))?;
        DType::from_name(name).ok_or_else(|| bad(format!("`{k}` is `{name}`, not f32, f16 or bf16")))
    };
    let rule = match v.get("rule").and_then(Value::as_str) {
        Some("sgd") => Rule::Sgd {
            momentum: number("momentum")?,
            dampening: number("dampening")?,
            nesterov: v.get("nesterov").and_then(Value::as_bool).ok_or_else(|| bad("optimizer has no `nesterov`"))?,
        },
        Some(name @ ("adam" | "adamw")) => Rule::Adam {
            beta1: number("beta1")?,
            beta2: number("beta2")?,
            eps: number("eps")?,
            decoupled: name == "adamw",
        },
        other => return Err(bad(format!("unknown optimizer rule {other:?}"))),
    };
    Ok(Optimizer {
        rule,
        lr: number("lr")?,
        weight_decay: number("weight_decay")?,
        params: dtype("params_dtype")?,
        state: dtype("state_dtype")?,
    })
}

fn config_from_json(v: &Value) -> Result<Config> {
    let number = |k: &str| v.get(k).and_then(Value::as_f64).ok_or_else(|| bad(format!("config has no number `{k}`")));
    let flag = |k: &str| v.get(k).and_then(Value::as_bool).ok_or_else(|| bad(format!("config has no boolean `{k}`")));
    let name = v.get("method").and_then(Value::as_str).ok_or_else(|| bad("config has no `method`"))?;
    let method = Method::from_name(name).ok_or_else(|| bad(format!("unknown method `{name}`")))?;
    let dtype = |k: &str| {
        let name = v.get(k).and_then(Value::as_str).ok_or_else(|| bad(format!("config has no `{k}`")))?;
        DType::from_name(name).ok_or_else(|| bad(format!("`{k}` is `{name}`, not f32, f16 or bf16")))
    };
    let types =
        ElementTypes { gradients: dtype("gradients_dtype")?, output: dtype("output_dtype")?, ema: dtype("ema_dtype")? };
    // Checkpoints written before the order option existed used the reference code's order.
    let order = match v.get("order") {
        None => Order::UpdateFirst,
        Some(o) => o
            .as_str()
            .and_then(Order::from_name)
            .ok_or_else(|| bad(format!("`order` is {o}, not \"update_first\" or \"project_first\"")))?,
    };
    // Files from before hierarchies have no `lambdas`.
    let lambdas = match v.get("lambdas") {
        None => Vec::new(),
        Some(l) => l
            .as_array()
            .and_then(|l| l.iter().map(Value::as_f64).collect::<Option<Vec<f64>>>())
            .ok_or_else(|| bad(format!("`lambdas` is {l}, not a list of numbers")))?,
    };
    if lambdas.len() > crate::config::MAX_LEVELS {
        return Err(bad(format!("{} lambdas, at most {}", lambdas.len(), crate::config::MAX_LEVELS)));
    }
    let config = Config {
        lambdas: [0.0; crate::config::MAX_LEVELS],
        levels: 0,
        order,
        types,
        method,
        ema: number("ema")?,
        lambda: number("lambda")?,
        eps: number("eps")?,
        rescale: flag("rescale")?,
        ratio_only: flag("ratio_only")?,
        guard: flag("guard")?,
        diagnostics: flag("diagnostics")?,
        optimizer: match v.get("optimizer") {
            None | Some(Value::Null) => None,
            Some(o) => Some(optimizer_from_json(o)?),
        },
    };
    let config = config.lambdas(&lambdas);
    config.validate().map_err(|e| bad(format!("config: {e}")))?;
    Ok(config)
}

fn layout_json(layout: &Layout) -> Value {
    Value::Array(layout.leaves().iter().map(|l| json!({"name": l.name, "len": l.len, "shape": l.shape})).collect())
}

fn layout_from_json(v: &Value) -> Result<Layout> {
    let leaves = v.as_array().ok_or_else(|| bad("layout is not a list"))?;
    let leaves = leaves
        .iter()
        .map(|l| {
            let name = l.get("name").and_then(Value::as_str).ok_or_else(|| bad("a leaf has no name"))?;
            let len =
                l.get("len").and_then(Value::as_u64).ok_or_else(|| bad(format!("leaf `{name}` has no length")))?;
            let shape = match l.get("shape") {
                None | Some(Value::Null) => None,
                Some(s) => Some(
                    s.as_array()
                        .and_then(|dims| dims.iter().map(Value::as_u64).collect::<Option<Vec<u64>>>())
                        .ok_or_else(|| bad(format!("leaf `{name}` has a malformed shape")))?,
                ),
            };
            Ok(Leaf { name: name.to_string(), len, shape })
        })
        .collect::<Result<Vec<Leaf>>>()?;
    Layout::from_leaves(leaves).map_err(|e| bad(format!("layout: {e}")))
}

fn safe_dtype(dtype: DType) -> safetensors::Dtype {
    match dtype {
        DType::F32 => safetensors::Dtype::F32,
        DType::F16 => safetensors::Dtype::F16,
        DType::Bf16 => safetensors::Dtype::BF16,
    }
}

fn tensor_shape(leaf: &Leaf) -> Vec<usize> {
    leaf.shape.as_ref().map_or(vec![leaf.len as usize], |s| s.iter().map(|&d| d as usize).collect())
}

/// Bytes of `value` as a JSON string (quotes and escapes included).
fn json_string_len(value: &str) -> u64 {
    serde_json::to_string(value).map_or(u64::MAX / 4, |s| s.len() as u64)
}

/// An upper bound on the header bytes of any checkpoint of a state with `layout` and
/// `config` (compare [`MAX_HEADER_BYTES`]): the tensor entries with their offsets as wide as
/// the data's size, and the metadata with its counters at the widest.
pub fn header_bytes_bound(layout: &Layout, config: &Config) -> u64 {
    let mut prefixes: Vec<String> = Vec::new();
    if config.method.has_main_ema() {
        prefixes.push("main_ema".into());
    }
    if config.method.has_aux_ema() {
        prefixes.push("aux_ema".into());
    }
    prefixes.extend((1..config.levels).map(|j| format!("level_ema{j}")));
    if let Some(o) = &config.optimizer {
        prefixes.extend(o.kind().state_names().iter().map(|n| format!("optimizer/{n}")));
    }
    // `:{"dtype":"BF16","shape":[],"data_offsets":[,]},` and two offsets, each at most the
    // data's bytes (4 per element and tensor at the widest).
    let data = layout.total_elements().saturating_mul(4 * prefixes.len() as u64);
    let entry = 49 + 2 * data.to_string().len() as u64;
    let mut bytes = 0u64;
    for leaf in layout.leaves() {
        let name = json_string_len(&leaf.name);
        let dims: u64 = tensor_shape(leaf).iter().map(|d| d.to_string().len() as u64 + 1).sum();
        for prefix in &prefixes {
            bytes = bytes.saturating_add(name + prefix.len() as u64 + 1 + entry + dims);
        }
    }
    let metadata =
        json_string_len(&layout_json(layout).to_string()) + json_string_len(&config_json(config).to_string());
    // The other keys and values (counters of 20 digits, the learning rate), braces, padding.
    bytes.saturating_add(metadata).saturating_add(512)
}

/// Refuses a layout and config whose checkpoints could exceed [`MAX_HEADER_BYTES`], naming
/// the leaf count as the cause.
pub(crate) fn check_header(layout: &Layout, config: &Config) -> Result<()> {
    let header_bytes = header_bytes_bound(layout, config);
    if header_bytes <= MAX_HEADER_BYTES {
        return Ok(());
    }
    let leaves = layout.len();
    Err(Error::CheckpointHeader {
        leaves,
        header_bytes,
        limit: MAX_HEADER_BYTES,
        per_leaf: header_bytes / leaves as u64,
    })
}

impl Checkpoint {
    /// The safetensors bytes ([`Error::CheckpointHeader`] when the leaves are too many for
    /// one file's header; a checkpoint whose vectors do not fit it, [`Checkpoint::check_values`],
    /// is refused rather than written as a file that reads back as something else).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        check_header(&self.layout, &self.config)?;
        self.check_values()?;
        let mut metadata: HashMap<String, String> = [
            ("format", FORMAT.to_string()),
            ("version", VERSION.to_string()),
            ("config", config_json(&self.config).to_string()),
            ("layout", layout_json(&self.layout).to_string()),
            ("steps", self.steps.to_string()),
            ("skipped_steps", self.skipped_steps.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let mut encoded = Vec::new();
        let ema = self.config.types.ema;
        let levels: Vec<(String, &Vec<Vec<f32>>)> =
            self.level_emas.iter().enumerate().map(|(j, v)| (format!("level_ema{}", j + 1), v)).collect();
        let fixed = [("main_ema".to_string(), &self.main_ema), ("aux_ema".to_string(), &self.aux_ema)];
        for (prefix, values) in fixed.into_iter().chain(levels) {
            for (leaf, v) in self.layout.leaves().iter().zip(values) {
                encoded.push((format!("{prefix}/{}", leaf.name), tensor_shape(leaf), ema, ema.encode(v)));
            }
        }
        if let (Some(o), Some(saved)) = (&self.config.optimizer, &self.optimizer) {
            metadata.insert("optimizer_step".into(), saved.step.to_string());
            metadata.insert("learning_rate".into(), saved.learning_rate.to_string());
            for (name, values) in o.kind().state_names().iter().zip(&saved.tensors) {
                for (leaf, v) in self.layout.leaves().iter().zip(values) {
                    let name = format!("optimizer/{name}/{}", leaf.name);
                    encoded.push((name, tensor_shape(leaf), o.state, o.state.encode(v)));
                }
            }
        }
        let tensors = encoded
            .iter()
            .map(|(name, shape, dtype, bytes)| {
                let view = safetensors::tensor::TensorView::new(safe_dtype(*dtype), shape.clone(), bytes)
                    .map_err(|e| bad(format!("{name}: {e}")))?;
                Ok((name.clone(), view))
            })
            .collect::<Result<Vec<_>>>()?;
        safetensors::serialize(tensors, Some(metadata)).map_err(|e| bad(e.to_string()))
    }

    /// Parses and checks a checkpoint: every field present and well formed, the config valid,
    /// every EMA tensor of the method present with the leaf's shape and f32 values, nothing else.
    pub fn from_bytes(bytes: &[u8]) -> Result<Checkpoint> {
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| match e {
            safetensors::SafeTensorError::HeaderTooLarge => bad(format!(
                "the header is over safetensors' limit of {MAX_HEADER_BYTES} bytes: too many leaves for one file"
            )),
            e => bad(format!("not a safetensors file: {e}")),
        })?;
        let tensors =
            safetensors::SafeTensors::deserialize(bytes).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let metadata = header.metadata().as_ref().ok_or_else(|| bad("no metadata"))?;
        let field = |k: &str| metadata.get(k).ok_or_else(|| bad(format!("metadata has no `{k}`")));
        if field("format")? != FORMAT {
            return Err(bad(format!("format is `{}`, not `{FORMAT}`", field("format")?)));
        }
        if field("version")? != VERSION {
            return Err(bad(format!("version {} is not supported (expected {VERSION})", field("version")?)));
        }
        let json =
            |k: &str| serde_json::from_str::<Value>(field(k)?).map_err(|e| bad(format!("`{k}` is not JSON: {e}")));
        let count = |k: &str| field(k)?.parse::<u64>().map_err(|_| bad(format!("`{k}` is not a count")));
        let config = config_from_json(&json("config")?)?;
        let layout = layout_from_json(&json("layout")?)?;
        let (steps, skipped_steps) = (count("steps")?, count("skipped_steps")?);
        if skipped_steps > steps {
            return Err(bad(format!("{skipped_steps} skipped steps out of {steps}")));
        }
        let mut expected = 0;
        let mut read = |prefix: &str, kept: bool, dtype: DType| -> Result<Vec<Vec<f32>>> {
            if !kept {
                return Ok(Vec::new());
            }
            layout
                .leaves()
                .iter()
                .map(|leaf| {
                    let name = format!("{prefix}/{}", leaf.name);
                    let t = tensors.tensor(&name).map_err(|_| bad(format!("tensor `{name}` is missing")))?;
                    if t.dtype() != safe_dtype(dtype) || t.shape() != tensor_shape(leaf).as_slice() {
                        return Err(bad(format!(
                            "tensor `{name}` is {:?} {:?}, expected {:?} {:?}",
                            t.dtype(),
                            t.shape(),
                            safe_dtype(dtype),
                            tensor_shape(leaf)
                        )));
                    }
                    expected += 1;
                    Ok(dtype.decode(t.data()))
                })
                .collect()
        };
        let main_ema = read("main_ema", config.method.has_main_ema(), config.types.ema)?;
        let aux_ema = read("aux_ema", config.method.has_aux_ema(), config.types.ema)?;
        let level_emas = (1..config.levels)
            .map(|j| read(&format!("level_ema{j}"), true, config.types.ema))
            .collect::<Result<Vec<_>>>()?;
        let optimizer = match &config.optimizer {
            None => None,
            Some(o) => {
                let step = count("optimizer_step")?;
                let learning_rate = field("learning_rate")?
                    .parse::<f32>()
                    .ok()
                    .filter(|lr| lr.is_finite() && *lr >= 0.0)
                    .ok_or_else(|| bad("`learning_rate` is not a finite number >= 0"))?;
                let tensors = o
                    .kind()
                    .state_names()
                    .iter()
                    .map(|name| read(&format!("optimizer/{name}"), true, o.state))
                    .collect::<Result<Vec<_>>>()?;
                Some(OptimizerCheckpoint { learning_rate, step, tensors })
            }
        };
        if tensors.len() != expected {
            return Err(bad(format!("{} tensors, expected {expected}", tensors.len())));
        }
        let checkpoint = Checkpoint { config, layout, steps, skipped_steps, main_ema, aux_ema, level_emas, optimizer };
        checkpoint.check_values()?;
        Ok(checkpoint)
    }

    /// Checks that the vectors and counters fit the checkpoint's own layout and config, as
    /// [`BloopState::restore`](crate::BloopState::restore) needs: one vector per leaf of the
    /// leaf's length for every average and optimizer tensor the config keeps (none for the
    /// others), every value finite in its stored type, at most `u32::MAX` skipped steps (the
    /// GPU's counter) and no more than `steps`, a finite learning rate >= 0 and an optimizer
    /// step within `u32`.
    pub fn check_values(&self) -> Result<()> {
        let (layout, config) = (&self.layout, &self.config);
        let in_file = |e: Error| bad(e.to_string());
        let ema = config.types.ema;
        let roles = [
            (Role::MainEma, &self.main_ema, config.method.has_main_ema()),
            (Role::AuxEma, &self.aux_ema, config.method.has_aux_ema()),
        ];
        for (role, values, kept) in roles {
            if !kept && !values.is_empty() {
                return Err(bad(format!("{role}: {} vectors, but {} keeps none", values.len(), config.method.name())));
            }
            if kept {
                validate::values(layout, role, values, ema).map_err(in_file)?;
            }
        }
        let levels = config.levels.saturating_sub(1);
        if self.level_emas.len() != levels {
            return Err(bad(format!("{} level averages, the config keeps {levels}", self.level_emas.len())));
        }
        for (j, values) in self.level_emas.iter().enumerate() {
            validate::values(layout, Role::LevelEma(j + 1), values, ema).map_err(in_file)?;
        }
        if self.skipped_steps > self.steps || self.skipped_steps > u32::MAX as u64 {
            return Err(bad(format!(
                "{} skipped steps out of {}: at most the steps and at most {} (the GPU counts in u32)",
                self.skipped_steps,
                self.steps,
                u32::MAX
            )));
        }
        match (&config.optimizer, &self.optimizer) {
            (None, None) => Ok(()),
            (None, Some(_)) => Err(bad("optimizer state, but the config has no optimizer")),
            (Some(_), None) => Err(bad("the config has an optimizer, but there is no optimizer state")),
            (Some(o), Some(saved)) => {
                let names = o.kind().state_names();
                if saved.tensors.len() != names.len() {
                    return Err(bad(format!(
                        "{} optimizer state tensors, {} keeps {}",
                        saved.tensors.len(),
                        o.name(),
                        names.len()
                    )));
                }
                for values in &saved.tensors {
                    validate::values(layout, Role::OptimizerState, values, o.state).map_err(in_file)?;
                }
                if !(saved.learning_rate.is_finite() && saved.learning_rate >= 0.0) {
                    return Err(bad(format!("learning rate {} is not finite and >= 0", saved.learning_rate)));
                }
                if saved.step > u32::MAX as u64 {
                    return Err(bad(format!("optimizer step {} exceeds u32", saved.step)));
                }
                Ok(())
            }
        }
    }

    /// Checks that this checkpoint fits a state with `layout` and `config` and that its values
    /// fit its own ([`Checkpoint::check_values`]); the error names the first difference, the
    /// method first, then the config's other keys.
    pub fn check_fits(&self, layout: &Layout, config: &Config) -> Result<()> {
        if self.layout.len() != layout.len() {
            return Err(bad(format!("the file has {} leaves, the state {}", self.layout.len(), layout.len())));
        }
        for (i, (file, here)) in self.layout.leaves().iter().zip(layout.leaves()).enumerate() {
            if file.name != here.name || file.len != here.len {
                return Err(bad(format!(
                    "leaf {i} is `{}` ({} elements) in the file but `{}` ({} elements) in the state",
                    file.name, file.len, here.name, here.len
                )));
            }
        }
        let (file, here) = (config_json(&self.config), config_json(config));
        if let Some(key) = differing_key(&file, &here) {
            let show = |v: &Value| v.get(key.as_str()).map_or("absent".to_string(), Value::to_string);
            return Err(bad(format!("config `{key}` is {} in the file but {} in the state", show(&file), show(&here))));
        }
        self.check_values()?;
        if let Some(o) = &config.optimizer {
            let tensors = o.kind().state_names().len();
            let fits = self.optimizer.as_ref().is_some_and(|saved| {
                saved.tensors.len() == tensors
                    && saved.tensors.iter().all(|t| {
                        t.len() == layout.len() && t.iter().zip(layout.leaves()).all(|(v, l)| v.len() as u64 == l.len)
                    })
            });
            if !fits {
                return Err(bad(format!("the optimizer's state needs {tensors} tensors of the layout's leaves")));
            }
        }
        Ok(())
    }
}

/// The config keys that say the most about a difference, in this order; the rest follow
/// alphabetically. A file of another method differs in many keys, and `method` is the one to name.
const KEY_ORDER: [&str; 4] = ["method", "optimizer", "lambdas", "order"];

/// The first key, in [`KEY_ORDER`] then alphabetical order, whose value differs between two
/// configs' JSON objects.
pub(crate) fn differing_key(a: &Value, b: &Value) -> Option<String> {
    let keys = |v: &Value| v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()).unwrap_or_default();
    let mut all: Vec<String> = KEY_ORDER.iter().map(|k| k.to_string()).collect();
    let mut rest: Vec<String> =
        keys(a).into_iter().chain(keys(b)).filter(|k| !KEY_ORDER.contains(&k.as_str())).collect();
    rest.sort();
    rest.dedup();
    all.extend(rest);
    all.into_iter().find(|k| a.get(k.as_str()) != b.get(k.as_str()))
}
