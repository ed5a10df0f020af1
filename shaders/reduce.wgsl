// Sum of one vec4 per invocation over the workgroup. The total is valid in invocation 0.

// Who an invocation is within its workgroup (and its subgroup, where subgroups are used).
struct Lanes {
    index: u32,
    subgroup: u32,
    subgroups: u32,
    lane: u32,
}

var<workgroup> scratch: array<vec4<f32>, WORKGROUP_SIZE>;

#ifdef SUBGROUPS
// Subgroup sums first: two barriers instead of one per halving step.
fn workgroup_sum(lanes: Lanes, value: vec4<f32>) -> vec4<f32> {
    let partial = subgroupAdd(value);
    // A previous call may still be reading scratch.
    workgroupBarrier();
    if lanes.lane == 0u {
        scratch[lanes.subgroup] = partial;
    }
    workgroupBarrier();
    var total = vec4<f32>(0.0);
    if lanes.index == 0u {
        for (var i = 0u; i < lanes.subgroups; i++) {
            total += scratch[i];
        }
    }
    return total;
}
#else
fn workgroup_sum(lanes: Lanes, value: vec4<f32>) -> vec4<f32> {
    let lid = lanes.index;
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
#endif
