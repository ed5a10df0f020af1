//! Parameter layouts of two real models, leaf by leaf, in the order their frameworks list them.

/// torchvision `resnet50()`: 161 tensors, 25,557,032 parameters. Stem conv + BN, four stages
/// of bottleneck blocks (3, 4, 6, 3) of widths 64..512 with expansion 4 and a downsample
/// branch in each stage's first block, then the 1000-way classifier.
pub fn resnet50() -> Vec<(String, u64)> {
    let mut leaves = Vec::new();
    // A convolution (no bias) followed by batch norm (weight and bias).
    let mut conv_bn = |conv: String, bn: String, out: u64, inp: u64, k: u64| {
        leaves.push((format!("{conv}.weight"), out * inp * k * k));
        leaves.push((format!("{bn}.weight"), out));
        leaves.push((format!("{bn}.bias"), out));
    };
    conv_bn("conv1".into(), "bn1".into(), 64, 3, 7);
    let mut inp = 64;
    for (stage, (blocks, width)) in [(3u64, 64u64), (4, 128), (6, 256), (3, 512)].into_iter().enumerate() {
        for block in 0..blocks {
            let p = format!("layer{}.{block}", stage + 1);
            conv_bn(format!("{p}.conv1"), format!("{p}.bn1"), width, inp, 1);
            conv_bn(format!("{p}.conv2"), format!("{p}.bn2"), width, width, 3);
            conv_bn(format!("{p}.conv3"), format!("{p}.bn3"), 4 * width, width, 1);
            if block == 0 {
                conv_bn(format!("{p}.downsample.0"), format!("{p}.downsample.1"), 4 * width, inp, 1);
            }
            inp = 4 * width;
        }
    }
    leaves.push(("fc.weight".into(), 1000 * 2048));
    leaves.push(("fc.bias".into(), 1000));
    leaves
}

/// Hugging Face `GPT2LMHeadModel` (gpt2, small) with the LM head tied to the embeddings:
/// 148 tensors, 124,439,808 parameters.
pub fn gpt2_small() -> Vec<(String, u64)> {
    let (d, vocab, ctx) = (768u64, 50257u64, 1024u64);
    let mut leaves = vec![("wte.weight".to_string(), vocab * d), ("wpe.weight".to_string(), ctx * d)];
    for layer in 0..12 {
        let p = format!("h.{layer}");
        for (name, n) in [
            ("ln_1.weight", d),
            ("ln_1.bias", d),
            ("attn.c_attn.weight", d * 3 * d),
            ("attn.c_attn.bias", 3 * d),
            ("attn.c_proj.weight", d * d),
            ("attn.c_proj.bias", d),
            ("ln_2.weight", d),
            ("ln_2.bias", d),
            ("mlp.c_fc.weight", d * 4 * d),
            ("mlp.c_fc.bias", 4 * d),
            ("mlp.c_proj.weight", 4 * d * d),
            ("mlp.c_proj.bias", d),
        ] {
            leaves.push((format!("{p}.{name}"), n));
        }
    }
    leaves.push(("ln_f.weight".into(), d));
    leaves.push(("ln_f.bias".into(), d));
    leaves
}
