// bf16 in 32-bit words: the top half of an f32. Stores round to nearest even.

fn bf16_to_f32(bits: u32) -> f32 {
    return bitcast<f32>(bits << 16u);
}

fn f32_to_bf16(v: f32) -> u32 {
    let u = bitcast<u32>(v);
    // A NaN stays a (quiet) NaN instead of rounding into infinity.
    if (u & 0x7fffffffu) > 0x7f800000u {
        return (u >> 16u) | 0x40u;
    }
    return (u + 0x7fffu + ((u >> 16u) & 1u)) >> 16u;
}
