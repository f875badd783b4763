// Fused margin softmax cross-entropy, forward. One workgroup per row reads that row of cos θ
// once, forms the margin logits on the fly (never stored), and keeps a running maximum and a
// running sum of exponentials rescaled to it (online softmax), so the row is read a single time.
// Outputs per row: the loss (log-sum-exp minus the target logit, 0 for rows without a target),
// the row maximum M and log Σ exp(z − M), from which the backward kernel rebuilds the softmax.
// Keeping M apart from the log of the sum keeps a small loss exact: log-sum-exp itself is near
// the logits' size s, and subtracting the target logit from it would cancel most digits.
// All accumulation is in f32.

@group(0) @binding(0) var<storage, read_write> cos_theta: array<f32>;
@group(0) @binding(1) var<storage, read_write> labels: array<i32>;
@group(0) @binding(2) var<storage, read_write> margins: array<f32>;
@group(0) @binding(3) var<storage, read_write> row_loss: array<f32>;
@group(0) @binding(4) var<storage, read_write> row_max: array<f32>;
@group(0) @binding(5) var<storage, read_write> row_log_sum: array<f32>;
@group(0) @binding(6) var<storage, read_write> params: array<u32>;

const WORKGROUP: u32 = {{ workgroup_size }}u;
const LOWEST: f32 = -3.4028235e38;

var<workgroup> shared_max: array<f32, WORKGROUP>;
var<workgroup> shared_sum: array<f32, WORKGROUP>;
var<workgroup> shared_rows: u32;

@compute @workgroup_size({{ workgroup_size }}, 1, 1)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    // Read through workgroup memory so that the early return below is uniform control flow,
    // as the barriers after it require.
    if lane == 0u {
        shared_rows = params[PARAM_ROWS];
    }
    let rows = workgroupUniformLoad(&shared_rows);
    let row = group.y;
    if row >= rows {
        return;
    }

    let columns = params[PARAM_COLUMNS];
    let family = params[PARAM_FAMILY];
    let overflow = params[PARAM_OVERFLOW];
    let scale = bitcast<f32>(params[PARAM_SCALE]);
    let label = labels[row];
    let margin = margins[row];
    let target_column = select(columns, u32(label), has_target(label, columns));
    let start = row * columns;

    // Each lane folds a strided slice of the row into (maximum, Σ exp(z − maximum)).
    var maximum = LOWEST;
    var sum = 0.0;
    for (var column = lane; column < columns; column += WORKGROUP) {
        var value = cos_theta[start + column];
        if column == target_column {
            value = target_cosine(value, margin, family, overflow);
        }
        let logit = scale * value;
        if logit > maximum {
            sum = sum * exp(maximum - logit) + 1.0;
            maximum = logit;
        } else {
            sum += exp(logit - maximum);
        }
    }
    shared_max[lane] = maximum;
    shared_sum[lane] = sum;
    workgroupBarrier();

    // Tree reduction of the lanes' pairs, rescaling each sum to the larger maximum.
    for (var stride = WORKGROUP / 2u; stride > 0u; stride /= 2u) {
        if lane < stride {
            let max_a = shared_max[lane];
            let max_b = shared_max[lane + stride];
            let merged = max(max_a, max_b);
            shared_sum[lane] = shared_sum[lane] * exp(max_a - merged)
                + shared_sum[lane + stride] * exp(max_b - merged);
            shared_max[lane] = merged;
        }
        workgroupBarrier();
    }

    if lane == 0u {
        let maximum = shared_max[0];
        let log_sum = log(shared_sum[0]);
        row_max[row] = maximum;
        row_log_sum[row] = log_sum;
        var loss = 0.0;
        if target_column < columns {
            let target_logit =
                scale * target_cosine(cos_theta[start + target_column], margin, family, overflow);
            loss = (maximum - target_logit) + log_sum;
        }
        row_loss[row] = loss;
    }
}
