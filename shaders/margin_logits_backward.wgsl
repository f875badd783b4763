// Backward of the margin logits: d cos θ[r, c] = d logits[r, c] · s, times the margin's
// derivative on the target column. One invocation per element, grid as the forward kernel.

@group(0) @binding(0) var<storage, read_write> cos_theta: array<f32>;
@group(0) @binding(1) var<storage, read_write> labels: array<i32>;
@group(0) @binding(2) var<storage, read_write> margins: array<f32>;
@group(0) @binding(3) var<storage, read_write> logits_grad: array<f32>;
@group(0) @binding(4) var<storage, read_write> cos_theta_grad: array<f32>;
@group(0) @binding(5) var<storage, read_write> params: array<u32>;

@compute @workgroup_size({{ workgroup_size }}, 1, 1)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let rows = params[PARAM_ROWS];
    let columns = params[PARAM_COLUMNS];
    let row = id.y;
    let column = id.x;
    if row >= rows || column >= columns {
        return;
    }
    let index = row * columns + column;
    let label = labels[row];
    var factor = bitcast<f32>(params[PARAM_SCALE]);
    if has_target(label, columns) && u32(label) == column {
        factor *= target_cosine_derivative(
            cos_theta[index], margins[row], params[PARAM_FAMILY], params[PARAM_OVERFLOW]);
    }
    cos_theta_grad[index] = logits_grad[index] * factor;
}
