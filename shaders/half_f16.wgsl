// f16 in 32-bit words. Arithmetic stays f32; stores round as pack2x16float does.

fn f16_to_f32(bits: u32) -> f32 {
    return unpack2x16float(bits).x;
}

fn f32_to_f16(v: f32) -> u32 {
    return pack2x16float(vec2<f32>(v, 0.0)) & 0xffffu;
}
