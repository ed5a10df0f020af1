//! The bodies of the fuzz targets (`fuzz/`, for `cargo fuzz`), shared with the bounded fuzz test
//! that `cargo test` runs. Host only: no GPU is involved.

use crate::checkpoint::Checkpoint;
use crate::layout::{Layout, Leaf};

/// Parses arbitrary bytes as a checkpoint. It may be refused, never panic; whatever parses
/// writes back to bytes that parse to the same checkpoint, and fits its own layout and config.
pub fn checkpoint_bytes(data: &[u8]) {
    let Ok(checkpoint) = Checkpoint::from_bytes(data) else { return };
    let bytes = checkpoint.to_bytes().expect("a parsed checkpoint writes back");
    let again = Checkpoint::from_bytes(&bytes).expect("a written checkpoint parses");
    let bits =
        |c: &Checkpoint| -> Vec<u32> { c.main_ema.iter().chain(&c.aux_ema).flatten().map(|x| x.to_bits()).collect() };
    assert_eq!(bits(&again), bits(&checkpoint));
    assert_eq!(
        (&again.layout, again.steps, again.skipped_steps),
        (&checkpoint.layout, checkpoint.steps, checkpoint.skipped_steps)
    );
    checkpoint.check_fits(&checkpoint.layout, &checkpoint.config).expect("a checkpoint fits itself");
}

/// Reads arbitrary bytes as a list of leaves (name length, name, element count, optional
/// shape) and builds a layout from them. It may be refused, never panic; an accepted layout
/// has unique names, no empty leaf, and shapes whose product is the length.
pub fn layout_bytes(data: &[u8]) {
    let mut rest = data;
    let mut take = |n: usize| -> Option<&[u8]> {
        (rest.len() >= n).then(|| {
            let (head, tail) = rest.split_at(n);
            rest = tail;
            head
        })
    };
    let mut leaves = Vec::new();
    while let Some(header) = take(2) {
        let name = match take((header[0] % 8) as usize) {
            Some(bytes) => String::from_utf8_lossy(bytes).into_owned(),
            None => break,
        };
        let Some(len) = take(4) else { break };
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as u64;
        let shape = (header[1] % 4 != 0)
            .then(|| (0..header[1] % 4).map(|_| take(1).map_or(1, |b| b[0] as u64)).collect::<Vec<u64>>());
        leaves.push(Leaf { name, len, shape });
    }
    if let Ok(layout) = Layout::from_leaves(leaves) {
        let mut names = std::collections::HashSet::new();
        for leaf in layout.leaves() {
            assert!(names.insert(&leaf.name) && leaf.len > 0);
            if let Some(shape) = &leaf.shape {
                assert_eq!(shape.iter().product::<u64>(), leaf.len);
            }
        }
    }
}

/// Reads bytes one field at a time; past the end every field reads as zero.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        let (&first, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        first
    }

    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |acc, _| acc << 8 | self.byte() as u64)
    }

    /// Mostly ordinary values, sometimes any bits (NaN, inf, values past f16's range).
    fn f32(&mut self) -> f32 {
        match self.byte() % 4 {
            0 => f32::from_bits((0..4).fold(0, |acc, _| acc << 8 | self.byte() as u32)),
            1 => self.byte() as f32 * 1000.0,
            _ => self.byte() as f32 / 16.0 - 8.0,
        }
    }

    fn vectors(&mut self, lengths: &[u64]) -> Vec<Vec<f32>> {
        // Usually one vector per leaf of its length, sometimes a wrong count or length.
        let count = if self.byte().is_multiple_of(4) { self.byte() as usize % 4 } else { lengths.len() };
        (0..count)
            .map(|i| {
                let len = lengths.get(i).copied().unwrap_or(2);
                let len = if self.byte().is_multiple_of(5) { self.byte() as u64 % 7 } else { len };
                (0..len).map(|_| self.f32()).collect()
            })
            .collect()
    }
}

/// The layout and configs the checkpoint bodies below work with (each role's type varies).
fn fuzz_state(choice: u8) -> (Layout, crate::Config) {
    use crate::{Config, DType, ElementTypes, Method, Optimizer};
    let layout = Layout::from_shapes([("w", vec![2u64, 3]), ("b", vec![3])]).expect("a valid layout");
    let config = match choice % 6 {
        0 => Config::new(Method::Bloop),
        1 => Config::new(Method::PcGrad).types(ElementTypes::all(DType::F16)),
        2 => Config::new(Method::Mixed),
        3 => Config::new(Method::Bloop).optimizer(Optimizer::adam(1e-3).state_type(DType::Bf16)),
        4 => Config::new(Method::Bloop).optimizer(Optimizer::sgd(0.1).momentum(0.9).state_type(DType::F16)),
        _ => Config::hierarchy(&[0.5, 0.25]).types(ElementTypes::all(DType::Bf16)),
    };
    (layout, config)
}

/// Builds a checkpoint by hand from arbitrary bytes (vectors of any count, length and value,
/// any counters, optimizer state or none) and offers it to [`Checkpoint::check_fits`], the
/// check `BloopState::restore` makes before it writes anything. It may be refused, never
/// panic; an accepted one holds exactly what the state's buffers take: one vector per leaf of
/// the leaf's length, finite in the stored type, counters within the GPU's u32, and it
/// survives a write and a read. Returns whether it was accepted.
pub fn restore_checkpoint(data: &[u8]) -> bool {
    use crate::checkpoint::OptimizerCheckpoint;
    let mut bytes = Bytes(data);
    let (layout, config) = fuzz_state(bytes.byte());
    let lengths = layout.lengths();
    let steps = bytes.u64() >> (bytes.byte() % 64);
    let skipped_steps = bytes.u64() >> (bytes.byte() % 64);
    let main_ema = bytes.vectors(&lengths);
    let aux_ema = bytes.vectors(&lengths);
    let level_emas = (0..bytes.byte() % 3).map(|_| bytes.vectors(&lengths)).collect();
    let optimizer = (bytes.byte() % 4 != 0).then(|| OptimizerCheckpoint {
        learning_rate: bytes.f32(),
        step: bytes.u64() >> (bytes.byte() % 64),
        tensors: (0..bytes.byte() % 3).map(|_| bytes.vectors(&lengths)).collect(),
    });
    let checkpoint = Checkpoint { config, layout, steps, skipped_steps, main_ema, aux_ema, level_emas, optimizer };
    if checkpoint.check_fits(&checkpoint.layout, &config).is_err() {
        return false;
    }
    let fits = |vectors: &[Vec<f32>], dtype: crate::DType| {
        vectors.len() == lengths.len()
            && vectors.iter().zip(&lengths).all(|(v, &n)| v.len() as u64 == n)
            && vectors.iter().flatten().all(|&x| dtype.round(x).is_finite())
    };
    let ema = config.types.ema;
    assert!(!config.method.has_main_ema() || fits(&checkpoint.main_ema, ema));
    assert!(config.method.has_aux_ema() || checkpoint.aux_ema.is_empty());
    assert!(checkpoint.level_emas.iter().all(|v| fits(v, ema)));
    assert!(checkpoint.skipped_steps <= checkpoint.steps && checkpoint.skipped_steps <= u32::MAX as u64);
    if let (Some(o), Some(saved)) = (&config.optimizer, &checkpoint.optimizer) {
        assert!(saved.tensors.iter().all(|t| fits(t, o.state)) && saved.step <= u32::MAX as u64);
    }
    let again = Checkpoint::from_bytes(&checkpoint.to_bytes().expect("an accepted checkpoint writes"))
        .expect("an accepted checkpoint reads back");
    again.check_fits(&checkpoint.layout, &config).expect("and still fits");
    true
}

/// Writes a valid checkpoint, then rebuilds the file from bytes-driven edits that keep every
/// tensor valid on its own (whole data of its dtype and shape) but break how they fit
/// together: a tensor dropped, duplicated under another name, stored in another type or
/// shape, an extra one, a layout entry or the method changed in the metadata, counters that
/// disagree. Reading may refuse, never panic; whatever it accepts fits itself. Returns whether
/// it was accepted.
pub fn inconsistent_checkpoint(data: &[u8]) -> bool {
    use safetensors::tensor::TensorView;
    let mut bytes = Bytes(data);
    let (layout, config) = fuzz_state(bytes.byte());
    let values = || -> Vec<Vec<f32>> { layout.lengths().iter().map(|&l| vec![0.5; l as usize]).collect() };
    let optimizer = config.optimizer.map(|o| crate::checkpoint::OptimizerCheckpoint {
        learning_rate: 1e-3,
        step: 3,
        tensors: vec![values(); o.kind().state_names().len()],
    });
    let valid = Checkpoint {
        config,
        layout: layout.clone(),
        steps: 5,
        skipped_steps: 1,
        main_ema: if config.method.has_main_ema() { values() } else { vec![] },
        aux_ema: if config.method.has_aux_ema() { values() } else { vec![] },
        level_emas: (1..config.levels).map(|_| values()).collect(),
        optimizer,
    };
    let file = valid.to_bytes().expect("a valid checkpoint writes");
    let parsed = safetensors::SafeTensors::deserialize(&file).expect("and parses");
    let (_, header) = safetensors::SafeTensors::read_metadata(&file).expect("with a header");
    let mut metadata = header.metadata().clone().unwrap_or_default();
    // (name, dtype, shape, data) of every tensor, each kept whole and valid.
    let mut tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = parsed
        .tensors()
        .into_iter()
        .map(|(name, t)| (name, t.dtype(), t.shape().to_vec(), t.data().to_vec()))
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    for _ in 0..1 + bytes.byte() % 3 {
        let pick = |b: u8, n: usize| if n == 0 { 0 } else { b as usize % n };
        let i = pick(bytes.byte(), tensors.len());
        match bytes.byte() % 8 {
            0 if !tensors.is_empty() => {
                tensors.remove(i);
            }
            1 if !tensors.is_empty() => {
                // Another tensor's contents under this one's name (the other leaf's shape).
                let j = pick(bytes.byte(), tensors.len());
                let (_, dtype, shape, data) = tensors[j].clone();
                (tensors[i].1, tensors[i].2, tensors[i].3) = (dtype, shape, data);
            }
            2 if !tensors.is_empty() => {
                // The same values in another element type.
                let t = &mut tensors[i];
                let from = match t.1 {
                    safetensors::Dtype::F16 => crate::DType::F16,
                    safetensors::Dtype::BF16 => crate::DType::Bf16,
                    _ => crate::DType::F32,
                };
                let (to, safe) = match bytes.byte() % 3 {
                    0 => (crate::DType::F32, safetensors::Dtype::F32),
                    1 => (crate::DType::F16, safetensors::Dtype::F16),
                    _ => (crate::DType::Bf16, safetensors::Dtype::BF16),
                };
                t.3 = to.encode(&from.decode(&t.3));
                t.1 = safe;
            }
            3 if !tensors.is_empty() => {
                // The same data in a flat or reshaped view.
                let t = &mut tensors[i];
                let n: usize = t.2.iter().product();
                t.2 = if bytes.byte() % 2 == 0 { vec![n] } else { vec![1, n] };
            }
            4 => {
                let name = format!("main_ema/extra{}", bytes.byte());
                tensors.push((name, safetensors::Dtype::F32, vec![2], crate::DType::F32.encode(&[1.0, 2.0])));
            }
            5 => {
                let len = bytes.byte() % 8;
                let layout = format!(r#"[{{"name":"w","len":{len},"shape":null}},{{"name":"b","len":3,"shape":[3]}}]"#);
                metadata.insert("layout".into(), layout);
            }
            6 => {
                let (_, other) = fuzz_state(bytes.byte());
                metadata.insert("config".into(), crate::checkpoint::config_json(&other).to_string());
            }
            _ => {
                let key = ["steps", "skipped_steps", "optimizer_step"][bytes.byte() as usize % 3];
                metadata.insert(key.into(), (bytes.u64() >> (bytes.byte() % 64)).to_string());
            }
        }
    }
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .filter_map(|(name, dtype, shape, data)| {
            TensorView::new(*dtype, shape.clone(), data).ok().map(|view| (name.clone(), view))
        })
        .collect();
    let Ok(file) = safetensors::serialize(views, Some(metadata)) else { return false };
    let Ok(checkpoint) = Checkpoint::from_bytes(&file) else { return false };
    checkpoint.check_fits(&checkpoint.layout, &checkpoint.config).expect("an accepted file fits itself");
    checkpoint_bytes(&file);
    true
}
