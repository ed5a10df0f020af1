// The separate optimizer kernel a trainer records after the BLOOP step: reads the direction `d`
// it wrote and the parameters (and the optimizer's state), writes the parameters (and state).
// Scalar f32 loads, one element per invocation, as the library's kernels; the constants
// (bias corrections included) come from the host.
struct Constants {
    n: u32,
    lr: f32,
    momentum: f32,
    beta1: f32,
    beta2: f32,
    step_size: f32,
    bc2_sqrt: f32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> c: Constants;
@group(0) @binding(1) var<storage, read> d: array<f32>;
@group(0) @binding(2) var<storage, read_write> p: array<f32>;
@group(0) @binding(3) var<storage, read_write> m: array<f32>;
@group(0) @binding(4) var<storage, read_write> v: array<f32>;

fn index(id: vec3<u32>, num_wg: vec3<u32>) -> u32 {
    return id.x + id.y * num_wg.x * 256u;
}

@compute @workgroup_size(256)
fn sgd(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) num_wg: vec3<u32>) {
    let i = index(id, num_wg);
    if i < c.n {
        p[i] -= c.lr * d[i];
    }
}

@compute @workgroup_size(256)
fn momentum(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) num_wg: vec3<u32>) {
    let i = index(id, num_wg);
    if i < c.n {
        let b = c.momentum * m[i] + d[i];
        m[i] = b;
        p[i] -= c.lr * b;
    }
}

@compute @workgroup_size(256)
fn adam(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) num_wg: vec3<u32>) {
    let i = index(id, num_wg);
    if i < c.n {
        let g = d[i];
        let m1 = m[i] + (1.0 - c.beta1) * (g - m[i]);
        let v1 = c.beta2 * v[i] + (1.0 - c.beta2) * g * g;
        m[i] = m1;
        v[i] = v1;
        p[i] -= c.step_size * (m1 / (sqrt(v1) / c.bc2_sqrt + c.eps));
    }
}
