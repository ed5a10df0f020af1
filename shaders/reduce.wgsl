// Sum of one vec4 per invocation over the workgroup; every invocation gets the total.
var<workgroup> scratch: array<vec4<f32>, WORKGROUP_SIZE>;

fn workgroup_sum(lid: u32, value: vec4<f32>) -> vec4<f32> {
    // A previous call may still be reading scratch[0].
    workgroupBarrier();
    scratch[lid] = value;
    for (var stride = WORKGROUP_SIZE / 2u; stride > 0u; stride >>= 1u) {
        workgroupBarrier();
        if lid < stride {
            scratch[lid] += scratch[lid + stride];
        }
    }
    workgroupBarrier();
    return scratch[0];
}
