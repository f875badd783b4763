//! Face alignment to the 112×112 ArcFace template from five landmarks (eye centres, nose tip,
//! mouth corners): the least-squares similarity transform (rotation, uniform scale,
//! translation) that maps the landmarks onto the template, and the bilinear warp of the photo
//! through it. The step before preprocessing for photos that are not aligned crops already.

use image::{Rgb, RgbImage};

use crate::backbone::INPUT_SIZE;

/// The ArcFace / InsightFace template: where the left eye, right eye, nose tip, left and right
/// mouth corners of an aligned 112×112 face sit (pixel centres, x to the right, y down).
pub const ARCFACE_TEMPLATE: [[f64; 2]; 5] = [
    [38.2946, 51.6963],
    [73.5318, 51.5014],
    [56.0252, 71.7366],
    [41.5493, 92.3655],
    [70.7299, 92.2041],
];

/// A similarity transform p ↦ [a −b; b a]·p + t.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Similarity {
    /// scale · cos(rotation).
    pub a: f64,
    /// scale · sin(rotation).
    pub b: f64,
    /// Translation, x.
    pub tx: f64,
    /// Translation, y.
    pub ty: f64,
}

impl Similarity {
    /// Applies the transform to a point.
    pub fn apply(&self, [x, y]: [f64; 2]) -> [f64; 2] {
        [
            self.a * x - self.b * y + self.tx,
            self.b * x + self.a * y + self.ty,
        ]
    }

    /// The inverse transform, or `None` when the scale is zero.
    pub fn inverse(&self) -> Option<Similarity> {
        let norm = self.a * self.a + self.b * self.b;
        if norm <= f64::EPSILON {
            return None;
        }
        let (a, b) = (self.a / norm, -self.b / norm);
        Some(Similarity {
            a,
            b,
            tx: -(a * self.tx - b * self.ty),
            ty: -(b * self.tx + a * self.ty),
        })
    }

    /// Uniform scale factor.
    pub fn scale(&self) -> f64 {
        self.a.hypot(self.b)
    }
}

/// The similarity transform that maps `from` onto `to` with the least squared error (the
/// closed form of Umeyama's method restricted to rotations, as faces are never mirrored).
/// `None` when the `from` points all coincide or a coordinate is not finite.
pub fn estimate_similarity(from: &[[f64; 2]], to: &[[f64; 2]]) -> Option<Similarity> {
    assert_eq!(from.len(), to.len(), "one target per point");
    if from.iter().chain(to).flatten().any(|v| !v.is_finite()) {
        return None;
    }
    let n = from.len() as f64;
    let mean = |points: &[[f64; 2]]| {
        let (x, y) = points
            .iter()
            .fold((0.0, 0.0), |(x, y), p| (x + p[0], y + p[1]));
        [x / n, y / n]
    };
    let (from_mean, to_mean) = (mean(from), mean(to));
    let (mut dot, mut cross, mut spread) = (0.0, 0.0, 0.0);
    for (p, q) in from.iter().zip(to) {
        let (px, py) = (p[0] - from_mean[0], p[1] - from_mean[1]);
        let (qx, qy) = (q[0] - to_mean[0], q[1] - to_mean[1]);
        dot += px * qx + py * qy;
        cross += px * qy - py * qx;
        spread += px * px + py * py;
    }
    if spread <= f64::EPSILON {
        return None;
    }
    let (a, b) = (dot / spread, cross / spread);
    Some(Similarity {
        a,
        b,
        tx: to_mean[0] - (a * from_mean[0] - b * from_mean[1]),
        ty: to_mean[1] - (b * from_mean[0] + a * from_mean[1]),
    })
}

/// The transform from a photo's five landmarks to the ArcFace template.
pub fn landmarks_to_template(landmarks: &[[f64; 2]; 5]) -> Option<Similarity> {
    estimate_similarity(landmarks, &ARCFACE_TEMPLATE)
}

/// The transform that puts two eye centres (the one on the left of the picture first) exactly on
/// the template's eyes: with two points the similarity is determined, so this is for faces whose
/// other landmarks are unknown, such as eyes clicked by hand.
pub fn eyes_to_template(left_eye: [f64; 2], right_eye: [f64; 2]) -> Option<Similarity> {
    estimate_similarity(&[left_eye, right_eye], &ARCFACE_TEMPLATE[..2])
}

/// Warps `photo` through `to_crop` into a `size`×`size` crop: each crop pixel takes the
/// bilinear interpolation of the photo at the inverse-mapped position; positions outside the
/// photo read black, as OpenCV's `warpAffine` with a constant border.
pub fn warp(photo: &RgbImage, to_crop: &Similarity, size: u32) -> RgbImage {
    let Some(to_photo) = to_crop.inverse() else {
        return RgbImage::new(size, size);
    };
    let (width, height) = (photo.width() as i64, photo.height() as i64);
    let pixel = |x: i64, y: i64| -> [f64; 3] {
        if x < 0 || y < 0 || x >= width || y >= height {
            return [0.0; 3];
        }
        let Rgb(value) = *photo.get_pixel(x as u32, y as u32);
        value.map(f64::from)
    };
    RgbImage::from_fn(size, size, |x, y| {
        let [sx, sy] = to_photo.apply([f64::from(x), f64::from(y)]);
        // Far outside the photo (or not a number) is black; this also keeps the integer
        // corner positions below from overflowing.
        let limit = 1e9;
        if !(sx.abs() < limit && sy.abs() < limit) {
            return Rgb([0, 0, 0]);
        }
        let (x0, y0) = (sx.floor(), sy.floor());
        let (fx, fy) = (sx - x0, sy - y0);
        let (x0, y0) = (x0 as i64, y0 as i64);
        let corners = [
            pixel(x0, y0),
            pixel(x0 + 1, y0),
            pixel(x0, y0 + 1),
            pixel(x0 + 1, y0 + 1),
        ];
        let weights = [
            (1.0 - fx) * (1.0 - fy),
            fx * (1.0 - fy),
            (1.0 - fx) * fy,
            fx * fy,
        ];
        let mut out = [0u8; 3];
        for (channel, value) in out.iter_mut().enumerate() {
            let blended: f64 = corners
                .iter()
                .zip(weights)
                .map(|(c, w)| c[channel] * w)
                .sum();
            *value = blended.round().clamp(0.0, 255.0) as u8;
        }
        Rgb(out)
    })
}

/// The aligned 112×112 face of `photo` given its five landmarks, or `None` when they coincide.
pub fn align_face(photo: &RgbImage, landmarks: &[[f64; 2]; 5]) -> Option<RgbImage> {
    landmarks_to_template(landmarks).map(|t| warp(photo, &t, INPUT_SIZE as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_known_similarity_is_recovered_exactly() {
        // Rotate by 30°, scale by 2.5, shift by (40, −7): a = 2.5·cos 30° = 2.1650635,
        // b = 2.5·sin 30° = 1.25.
        let angle = std::f64::consts::FRAC_PI_6;
        let truth = Similarity {
            a: 2.5 * angle.cos(),
            b: 2.5 * angle.sin(),
            tx: 40.0,
            ty: -7.0,
        };
        let moved: Vec<[f64; 2]> = ARCFACE_TEMPLATE.iter().map(|&p| truth.apply(p)).collect();
        let found = estimate_similarity(&ARCFACE_TEMPLATE, &moved).unwrap();
        assert!((truth.a - 2.165_063_509).abs() < 1e-9 && (truth.b - 1.25).abs() < 1e-12);
        for (value, expected) in [
            (found.a, truth.a),
            (found.b, truth.b),
            (found.tx, 40.0),
            (found.ty, -7.0),
        ] {
            assert!((value - expected).abs() < 1e-9, "{found:?}");
        }
        assert!((found.scale() - 2.5).abs() < 1e-9);
        // And the way back maps the moved landmarks onto the template.
        let back = landmarks_to_template(&moved.try_into().unwrap()).unwrap();
        let inverse = truth.inverse().unwrap();
        assert!((back.a - inverse.a).abs() < 1e-9 && (back.ty - inverse.ty).abs() < 1e-9);
    }

    #[test]
    fn least_squares_averages_noisy_landmarks() {
        // Two points pulled apart symmetrically around their targets: the best scale is the
        // ratio of the spreads, here (2 + 2) / (1 + 1) = 2, with no rotation or shift.
        let found =
            estimate_similarity(&[[-1.0, 0.0], [1.0, 0.0]], &[[-2.0, 0.0], [2.0, 0.0]]).unwrap();
        assert_eq!((found.a, found.b, found.tx, found.ty), (2.0, 0.0, 0.0, 0.0));
        assert!(
            estimate_similarity(&[[1.0, 1.0], [1.0, 1.0]], &[[0.0, 0.0], [1.0, 0.0]]).is_none()
        );
    }

    #[test]
    fn two_eyes_map_exactly_onto_the_template_eyes() {
        // Eyes at twice the template's coordinates: the transform halves, no rotation or shift.
        let [left, right] =
            [ARCFACE_TEMPLATE[0], ARCFACE_TEMPLATE[1]].map(|[x, y]| [2.0 * x, 2.0 * y]);
        let found = eyes_to_template(left, right).unwrap();
        for (value, expected) in [
            (found.a, 0.5),
            (found.b, 0.0),
            (found.tx, 0.0),
            (found.ty, 0.0),
        ] {
            assert!((value - expected).abs() < 1e-9, "{found:?}");
        }
        // Level eyes 10 pixels apart, the left one at (100, 200). The template's eye vector,
        // (73.5318 − 38.2946, 51.5014 − 51.6963) = (35.2372, −0.1949), is the image of (10, 0),
        // so a = 3.52372 and b = −0.01949; the shift puts (100, 200) on (38.2946, 51.6963).
        let found = eyes_to_template([100.0, 200.0], [110.0, 200.0]).unwrap();
        let (a, b) = (3.523_72, -0.019_49);
        let tx = 38.2946 - (a * 100.0 - b * 200.0);
        let ty = 51.6963 - (b * 100.0 + a * 200.0);
        for (value, expected) in [(found.a, a), (found.b, b), (found.tx, tx), (found.ty, ty)] {
            assert!((value - expected).abs() < 1e-9, "{found:?}");
        }
        assert!(eyes_to_template([5.0, 5.0], [5.0, 5.0]).is_none());
    }

    #[test]
    fn warping_by_a_shift_moves_pixels_and_fills_black_outside() {
        let mut photo = RgbImage::new(8, 8);
        photo.put_pixel(5, 3, Rgb([200, 100, 50]));
        // Crop = photo shifted left by 2 and up by 1: photo (5, 3) lands on crop (3, 2).
        let shift = Similarity {
            a: 1.0,
            b: 0.0,
            tx: -2.0,
            ty: -1.0,
        };
        let crop = warp(&photo, &shift, 8);
        assert_eq!(crop.get_pixel(3, 2).0, [200, 100, 50]);
        assert_eq!(crop.get_pixel(5, 3).0, [0, 0, 0]);
        // Crop (7, 7) reads photo (9, 8), outside: black.
        assert_eq!(crop.get_pixel(7, 7).0, [0, 0, 0]);
    }

    #[test]
    fn warping_halfway_between_pixels_blends_them() {
        let mut photo = RgbImage::new(4, 1);
        photo.put_pixel(1, 0, Rgb([100, 0, 0]));
        photo.put_pixel(2, 0, Rgb([200, 0, 0]));
        // Crop x reads photo x + 1.5: crop 0 → between photo pixels 1 and 2.
        let shift = Similarity {
            a: 1.0,
            b: 0.0,
            tx: -1.5,
            ty: 0.0,
        };
        let crop = warp(&photo, &shift, 1);
        assert_eq!(crop.get_pixel(0, 0).0, [150, 0, 0]);
    }

    #[test]
    fn broken_landmarks_give_no_transform_and_far_transforms_read_black() {
        let mut landmarks = ARCFACE_TEMPLATE;
        landmarks[2][0] = f64::NAN;
        assert!(landmarks_to_template(&landmarks).is_none());
        landmarks[2][0] = f64::INFINITY;
        assert!(landmarks_to_template(&landmarks).is_none());
        // A shift of 10¹⁸ pixels lands outside any photo: black, and no integer overflow.
        let photo = RgbImage::from_pixel(4, 4, Rgb([200, 200, 200]));
        let far = Similarity {
            a: 1.0,
            b: 0.0,
            tx: -1e18,
            ty: 0.0,
        };
        assert_eq!(warp(&photo, &far, 2).get_pixel(1, 1).0, [0, 0, 0]);
    }
}
