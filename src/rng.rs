//! The reproducible generator behind [`crate::EmaInit::Normal`]: SplitMix64 streams and
//! Box-Muller normals in f64, so a seed gives the same values on every platform.

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and good enough for initial values.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A stream starting from `seed`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal (Box-Muller; one value per call, the partner is dropped for simplicity).
    pub fn next_normal(&mut self) -> f64 {
        let u1 = 1.0 - self.next_f64(); // in (0, 1], so ln is finite
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// An independent seed for stream `index` of `seed` (leaves, roles).
pub fn derive_seed(seed: u64, index: u64) -> u64 {
    SplitMix64::new(seed ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03)).next_u64()
}

/// Standard normal values for leaves of the given lengths, each leaf from its own stream.
pub fn normal_leaves(seed: u64, lengths: &[u64]) -> Vec<Vec<f32>> {
    lengths
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            let mut rng = SplitMix64::new(derive_seed(seed, i as u64));
            (0..len).map(|_| rng.next_normal() as f32).collect()
        })
        .collect()
}
