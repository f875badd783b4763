// Margin logits: logits[r, c] = s · cos θ[r, c], except on the target column of each row with a
// label, where the margin is applied first. One invocation per element; the grid is
// (⌈columns / workgroup⌉, rows).

@group(0) @binding(0) var<storage, read_write> cos_theta: array<f32>;
@group(0) @binding(1) var<storage, read_write> labels: array<i32>;
@group(0) @binding(2) var<storage, read_write> margins: array<f32>;
@group(0) @binding(3) var<storage, read_write> logits: array<f32>;
@group(0) @binding(4) var<storage, read_write> params: array<u32>;

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
    var value = cos_theta[index];
    if has_target(label, columns) && u32(label) == column {
        value = target_cosine(value, margins[row], params[PARAM_FAMILY], params[PARAM_OVERFLOW]);
    }
    logits[index] = bitcast<f32>(params[PARAM_SCALE]) * value;
}
