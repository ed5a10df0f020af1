//! The host baseline: the same step in f32 over flat slices, split across all cores
//! (one pass for the dot products, one for the direction, like the GPU stages).

use bloop::{Config, Method};

pub struct CpuStep {
    pub main: Vec<f32>,
    pub aux: Vec<f32>,
    pub ema: Vec<f32>,
    pub aux_ema: Vec<f32>,
    pub out: Vec<f32>,
}

fn chunk_len(n: usize, threads: usize) -> usize {
    n.div_ceil(threads).max(4096)
}

impl CpuStep {
    pub fn new(main: Vec<f32>, aux: Vec<f32>) -> CpuStep {
        let n = main.len();
        CpuStep { ema: main.clone(), aux_ema: aux.clone(), out: vec![0.0; n], main, aux }
    }

    pub fn step(&mut self, config: &Config, threads: usize) {
        let n = self.main.len();
        let chunk = chunk_len(n, threads);
        let b = config.ema as f32;
        let (l, s) = (config.lambda as f32, config.scale() as f32);
        let ratio = |dot: f32, sq: f32| {
            let r = dot / (sq + config.eps as f32);
            config.ratio_cap().map_or(r, |c| r.min(c as f32))
        };
        let (main, aux) = (&self.main, &self.aux);
        if config.method == Method::Mixed {
            std::thread::scope(|scope| {
                for (i, out) in self.out.chunks_mut(chunk).enumerate() {
                    scope.spawn(move || {
                        let base = i * chunk;
                        for (j, d) in out.iter_mut().enumerate() {
                            *d = s * (main[base + j] + l * aux[base + j]);
                        }
                    });
                }
            });
            return;
        }
        let pcgrad = config.method == Method::PcGrad;
        let (ema, aux_ema) = (&self.ema, &self.aux_ema);
        let dots: [f32; 4] = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..n.div_ceil(chunk))
                .map(|c| {
                    scope.spawn(move || {
                        let mut d = [0f32; 4];
                        for i in c * chunk..((c + 1) * chunk).min(n) {
                            let e = ema[i] + b * (main[i] - ema[i]);
                            d[0] += e * aux[i];
                            d[1] += e * e;
                            if pcgrad {
                                let a = aux_ema[i] + b * (aux[i] - aux_ema[i]);
                                d[2] += a * main[i];
                                d[3] += a * a;
                            }
                        }
                        d
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .fold([0f32; 4], |acc, d| std::array::from_fn(|k| acc[k] + d[k]))
        });
        let (r, r2) = (ratio(dots[0], dots[1]), ratio(dots[2], dots[3]));
        let ratio_only = config.ratio_only;
        std::thread::scope(|scope| {
            let chunks = self.out.chunks_mut(chunk).zip(self.ema.chunks_mut(chunk)).zip(self.aux_ema.chunks_mut(chunk));
            for (c, ((out, ema), aux_ema)) in chunks.enumerate() {
                scope.spawn(move || {
                    let base = c * chunk;
                    for j in 0..out.len() {
                        let (gm, ga) = (main[base + j], aux[base + j]);
                        let e = ema[j] + b * (gm - ema[j]);
                        if ratio_only {
                            out[j] = s * ((1.0 - l * r) * gm + l * ga);
                        } else if pcgrad {
                            let a = aux_ema[j] + b * (ga - aux_ema[j]);
                            aux_ema[j] = a;
                            out[j] = s * ((gm - r2 * a) + l * (ga - r * e));
                        } else {
                            out[j] = s * (gm + l * (ga - r * e));
                        }
                        ema[j] = e;
                    }
                });
            }
        });
    }
}
