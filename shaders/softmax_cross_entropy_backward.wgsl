// Fused margin softmax cross-entropy, backward: d loss / d cos θ[r, c] =
// g[r] · s · (softmax[r, c] − onehot[r, c]), with the target column multiplied by the margin's
// derivative, where g[r] is the gradient reaching row r's loss. The softmax is rebuilt from the
// forward's row maximum M and log Σ exp(z − M); rows without a target get zeros. One invocation per element; the grid
// is (⌈columns / workgroup⌉, rows).

@group(0) @binding(0) var<storage, read_write> cos_theta: array<f32>;
@group(0) @binding(1) var<storage, read_write> labels: array<i32>;
@group(0) @binding(2) var<storage, read_write> margins: array<f32>;
@group(0) @binding(3) var<storage, read_write> row_max: array<f32>;
@group(0) @binding(4) var<storage, read_write> row_log_sum: array<f32>;
@group(0) @binding(5) var<storage, read_write> row_loss_grad: array<f32>;
@group(0) @binding(6) var<storage, read_write> cos_theta_grad: array<f32>;
@group(0) @binding(7) var<storage, read_write> params: array<u32>;

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
    if !has_target(label, columns) {
        cos_theta_grad[index] = 0.0;
        return;
    }

    let family = params[PARAM_FAMILY];
    let overflow = params[PARAM_OVERFLOW];
    let scale = bitcast<f32>(params[PARAM_SCALE]);
    let margin = margins[row];
    let value = cos_theta[index];
    let is_target = u32(label) == column;
    var logit = scale * value;
    if is_target {
        logit = scale * target_cosine(value, margin, family, overflow);
    }
    let probability = exp((logit - row_max[row]) - row_log_sum[row]);
    var gradient = probability;
    if is_target {
        gradient = (probability - 1.0) * target_cosine_derivative(value, margin, family, overflow);
    }
    cos_theta_grad[index] = row_loss_grad[row] * scale * gradient;
}
