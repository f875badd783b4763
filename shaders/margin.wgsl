// Margin formulas shared by every margin kernel: the target cosine after the margin (before the
// scale) and its derivative with respect to cos θ. The host prepends this file to each kernel.
// It is the GPU copy of `head::target_logit` in core, and tests hold the two to the same values.

const FAMILY_NONE: u32 = 0u;
const FAMILY_ANGULAR: u32 = 1u;
const FAMILY_COSINE: u32 = 2u;
const OVERFLOW_MONOTONIC: u32 = 1u;

// Below this value of 1 − cos²θ the derivative treats sin θ as constant, so it stays finite at
// cos θ = ±1 (core's SIN_SQUARED_FLOOR). Values always use the exact sin θ.
const SIN_SQUARED_FLOOR: f32 = 1e-6;
const PI: f32 = 3.14159265358979;

// Layout of the `params` buffer every margin kernel reads.
const PARAM_ROWS: u32 = 0u;
const PARAM_COLUMNS: u32 = 1u;
const PARAM_FAMILY: u32 = 2u;
const PARAM_OVERFLOW: u32 = 3u;
const PARAM_SCALE: u32 = 4u;

// Whether the monotonic policy replaces cos(θ + m) by its fall-back: θ + m past π, that is
// cos θ at or below cos(π − m).
fn uses_fallback(cos_theta: f32, margin: f32, overflow: u32) -> bool {
    return overflow == OVERFLOW_MONOTONIC && !(cos_theta > cos(PI - margin));
}

// The target cosine after the margin: cos(θ + m), cos θ − m, or cos θ.
fn target_cosine(cos_theta: f32, margin: f32, family: u32, overflow: u32) -> f32 {
    if family == FAMILY_COSINE {
        return cos_theta - margin;
    }
    if family == FAMILY_ANGULAR {
        if uses_fallback(cos_theta, margin, overflow) {
            return cos_theta - margin * sin(PI - margin);
        }
        let sin_theta = sqrt(max(1.0 - cos_theta * cos_theta, 0.0));
        return cos_theta * cos(margin) - sin_theta * sin(margin);
    }
    return cos_theta;
}

// d target_cosine / d cos θ. For the angular margin it is cos m + sin m · cos θ / sin θ
// (= sin(θ + m) / sin θ), and cos m below the floor, where sin θ counts as constant.
fn target_cosine_derivative(cos_theta: f32, margin: f32, family: u32, overflow: u32) -> f32 {
    if family != FAMILY_ANGULAR || uses_fallback(cos_theta, margin, overflow) {
        return 1.0;
    }
    let sin_squared = 1.0 - cos_theta * cos_theta;
    if sin_squared < SIN_SQUARED_FLOOR {
        return cos(margin);
    }
    return cos(margin) + sin(margin) * cos_theta / sqrt(sin_squared);
}

// Whether `label` names a column of a matrix with `columns` columns (−1 means no target).
fn has_target(label: i32, columns: u32) -> bool {
    return label >= 0 && u32(label) < columns;
}
