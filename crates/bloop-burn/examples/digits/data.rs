//! The UCI digits as scikit-learn ships them, the fixed split, and a small seeded RNG.

use std::io::Read;
use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};

/// The 1797 images (64 pixels in 0..16 each), their labels and the train/test split.
pub struct Digits {
    pub pixels: Vec<[u8; 64]>,
    pub labels: Vec<u8>,
    pub train: Vec<usize>,
    pub test: Vec<usize>,
    mean: f32,
    std: f32,
}

impl Digits {
    pub fn load(folder: &Path) -> Result<Digits, String> {
        let path = folder.join("digits.csv.gz");
        let file = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut text = String::new();
        flate2::read::GzDecoder::new(file).read_to_string(&mut text).map_err(|e| format!("{}: {e}", path.display()))?;
        let (mut pixels, mut labels): (Vec<[u8; 64]>, Vec<u8>) = (Vec::new(), Vec::new());
        for (row, line) in text.lines().enumerate() {
            let values: Vec<u8> = line
                .split(',')
                .map(|v| v.trim().parse::<u8>())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{} row {row}: {e}", path.display()))?;
            if values.len() != 65 || values[..64].iter().any(|&p| p > 16) || values[64] > 9 {
                return Err(format!("{} row {row}: expected 64 pixels in 0..16 and a label in 0..9", path.display()));
            }
            pixels.push(values[..64].try_into().expect("64 values"));
            labels.push(values[64]);
        }
        let path = folder.join("split.json");
        let split: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        let list = |key: &str| -> Result<Vec<usize>, String> {
            split[key]
                .as_array()
                .ok_or_else(|| format!("{}: no `{key}` list", path.display()))?
                .iter()
                .map(|v| v.as_u64().map(|i| i as usize).filter(|&i| i < pixels.len()))
                .collect::<Option<Vec<usize>>>()
                .ok_or_else(|| format!("{}: `{key}` holds a bad row index", path.display()))
        };
        let (train, test) = (list("train")?, list("test")?);
        // One scalar mean and (population) standard deviation over the training pixels / 16.
        let values = || train.iter().flat_map(|&i| pixels[i].iter().map(|&p| p as f64 / 16.0));
        let count = (train.len() * 64) as f64;
        let mean = values().sum::<f64>() / count;
        let std = (values().map(|x| (x - mean) * (x - mean)).sum::<f64>() / count).sqrt();
        Ok(Digits { pixels, labels, train, test, mean: mean as f32, std: std as f32 })
    }

    /// `(pixels / 16 - mean) / std` in f32, one row per index.
    pub fn features(&self, rows: &[usize], device: &Device) -> Tensor<2> {
        let x: Vec<f32> = rows
            .iter()
            .flat_map(|&i| self.pixels[i].iter().map(|&p| (p as f32 / 16.0 - self.mean) / self.std))
            .collect();
        Tensor::from_data(TensorData::new(x, [rows.len(), 64]), device)
    }

    pub fn one_hot(&self, rows: &[usize], device: &Device) -> Tensor<2> {
        let y: Vec<f32> =
            rows.iter().flat_map(|&i| (0..10).map(move |c| if self.labels[i] == c { 1.0 } else { 0.0 })).collect();
        Tensor::from_data(TensorData::new(y, [rows.len(), 10]), device)
    }
}

/// splitmix64: the same stream on every machine.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1).
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let (a, b) = (self.uniform(), self.uniform());
        (-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()
    }

    /// Standard normal conditioned on `|x| <= bound` (rejection).
    pub fn truncated_normal(&mut self, bound: f64) -> f64 {
        loop {
            let x = self.normal();
            if x.abs() <= bound {
                return x;
            }
        }
    }

    /// A uniformly random permutation of 0..n (Fisher-Yates).
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            p.swap(i, j);
        }
        p
    }
}
