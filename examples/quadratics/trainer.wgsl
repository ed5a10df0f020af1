// A small trainer written the way renderer-style trainers are: parameters, data and both
// loss gradients live in GPU buffers, and a step never touches the host. One workgroup per
// run; `step[0]` counts steps on the GPU, so recorded steps need no per-step host input.
//
// Main loss: 1/2 mean over a mini-batch of (x . theta - y)^2; aux loss: 1/2 |theta - aux_target|^2.

struct Problem {
    rows: u32,
    cols: u32,
    batch: u32,
    learning_rate: f32,
}

@group(0) @binding(0) var<uniform> problem: Problem;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;
@group(0) @binding(3) var<storage, read> aux_target: array<f32>;
// A permutation of the rows per epoch: the mini-batch order, the same for every run.
@group(0) @binding(4) var<storage, read> order: array<u32>;

@group(1) @binding(0) var<storage, read_write> theta: array<f32>;
@group(1) @binding(1) var<storage, read_write> step: array<u32>;
// The library's pool views: this run's main and aux gradients, and the combined direction.
@group(1) @binding(2) var<storage, read_write> g_main: array<f32>;
@group(1) @binding(3) var<storage, read_write> g_aux: array<f32>;
@group(1) @binding(4) var<storage, read_write> direction: array<f32>;
// (main loss, aux loss) per evaluation, evaluation k after k epochs.
@group(1) @binding(5) var<storage, read_write> history: array<f32>;

const WORKGROUP_SIZE: u32 = 256u;
const MAX_BATCH: u32 = 256u;

var<workgroup> residual: array<f32, MAX_BATCH>;
var<workgroup> sums: array<vec2<f32>, WORKGROUP_SIZE>;

fn row_dot(row: u32) -> f32 {
    var acc = 0.0;
    for (var j = 0u; j < problem.cols; j++) {
        acc += x[row * problem.cols + j] * theta[j];
    }
    return acc;
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn gradients(@builtin(local_invocation_index) lid: u32) {
    let steps_per_epoch = problem.rows / problem.batch;
    let s = step[0];
    let first = (s / steps_per_epoch) * problem.rows + (s % steps_per_epoch) * problem.batch;
    if lid < problem.batch {
        let row = order[first + lid];
        residual[lid] = row_dot(row) - y[row];
    }
    workgroupBarrier();
    for (var j = lid; j < problem.cols; j += WORKGROUP_SIZE) {
        var acc = 0.0;
        for (var i = 0u; i < problem.batch; i++) {
            acc += x[order[first + i] * problem.cols + j] * residual[i];
        }
        g_main[j] = acc / f32(problem.batch);
        g_aux[j] = theta[j] - aux_target[j];
    }
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn sgd(@builtin(local_invocation_index) lid: u32) {
    for (var j = lid; j < problem.cols; j += WORKGROUP_SIZE) {
        theta[j] -= problem.learning_rate * direction[j];
    }
    if lid == 0u {
        step[0] += 1u;
    }
}

// With the library's fused SGD step (the default), the parameters are already updated: only the
// batch counter advances here.
@compute @workgroup_size(1)
fn advance() {
    step[0] += 1u;
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn evaluate(@builtin(local_invocation_index) lid: u32) {
    var partial = vec2<f32>(0.0);
    for (var row = lid; row < problem.rows; row += WORKGROUP_SIZE) {
        let r = row_dot(row) - y[row];
        partial.x += r * r;
    }
    for (var j = lid; j < problem.cols; j += WORKGROUP_SIZE) {
        let d = theta[j] - aux_target[j];
        partial.y += d * d;
    }
    sums[lid] = partial;
    for (var stride = WORKGROUP_SIZE / 2u; stride > 0u; stride >>= 1u) {
        workgroupBarrier();
        if lid < stride {
            sums[lid] += sums[lid + stride];
        }
    }
    if lid == 0u {
        let k = step[0] / (problem.rows / problem.batch);
        history[2u * k] = 0.5 * sums[0].x / f32(problem.rows);
        history[2u * k + 1u] = 0.5 * sums[0].y;
    }
}
