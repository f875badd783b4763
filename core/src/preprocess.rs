//! Preprocessing of faces already in memory: decode, resize to 112×112, normalise to
//! (x − 127.5) / 127.5 in channel-first RGB, and the horizontal flip used for augmentation and
//! for flip-summed evaluation embeddings. The first stage of the pipeline, before the backbone.

use image::RgbImage;
use image::imageops::FilterType;

use crate::backbone::INPUT_SIZE;

/// Number of values of one preprocessed face: 3 × 112 × 112.
pub const FACE_LEN: usize = 3 * INPUT_SIZE * INPUT_SIZE;

/// Errors of preprocessing.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    /// The bytes are not an image the decoder understands. The decoder's message is kept as
    /// text: its error chain repeats itself, which would print every cause twice.
    #[error("cannot decode image: {0}")]
    Decode(String),
    /// The image has no pixels.
    #[error("image has no pixels ({width}×{height})")]
    Empty {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
}

/// Decodes JPEG, PNG, PGM, GIF or WebP bytes to RGB; grey images are replicated to three
/// channels.
pub fn decode(bytes: &[u8]) -> Result<RgbImage, PreprocessError> {
    let image = image::load_from_memory(bytes)
        .map_err(|error| PreprocessError::Decode(error.to_string()))?
        .to_rgb8();
    if image.width() == 0 || image.height() == 0 {
        return Err(PreprocessError::Empty {
            width: image.width(),
            height: image.height(),
        });
    }
    Ok(image)
}

/// Resizes to 112×112 (bilinear, as OpenCV's default) unless it already is.
pub fn resize_to_input(image: &RgbImage) -> RgbImage {
    let size = INPUT_SIZE as u32;
    if image.width() == size && image.height() == size {
        return image.clone();
    }
    image::imageops::resize(image, size, size, FilterType::Triangle)
}

/// A 112×112 RGB face as the backbone's input: channel-first, (x − 127.5) / 127.5.
/// Larger or smaller images are resized first.
pub fn normalize(image: &RgbImage) -> Vec<f32> {
    let image = resize_to_input(image);
    let plane = INPUT_SIZE * INPUT_SIZE;
    let mut out = vec![0.0f32; FACE_LEN];
    for (index, pixel) in image.pixels().enumerate() {
        for channel in 0..3 {
            out[channel * plane + index] = (f32::from(pixel[channel]) - 127.5) / 127.5;
        }
    }
    out
}

/// Decodes and normalises in one step.
pub fn face_from_bytes(bytes: &[u8]) -> Result<Vec<f32>, PreprocessError> {
    Ok(normalize(&decode(bytes)?))
}

/// Mirrors a channel-first image left to right, in place: the width (last) axis is reversed.
///
/// `data` holds `channels × height × width` values.
pub fn flip_horizontal(data: &mut [f32], channels: usize, height: usize, width: usize) {
    assert_eq!(data.len(), channels * height * width, "data must be C×H×W");
    for row in data.chunks_exact_mut(width) {
        row.reverse();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flip_reverses_the_width_axis_not_the_height() {
        // One channel, 2 rows × 3 columns: [[1, 2, 3], [4, 5, 6]].
        let mut data = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        flip_horizontal(&mut data, 1, 2, 3);
        assert_eq!(data, vec![3.0, 2.0, 1.0, 6.0, 5.0, 4.0]);

        // Two channels of 2 × 2: each row of each channel mirrored, channels kept apart.
        let mut data = vec![1.0, 2.0, 3.0, 4.0, 10.0, 20.0, 30.0, 40.0];
        flip_horizontal(&mut data, 2, 2, 2);
        assert_eq!(data, vec![2.0, 1.0, 4.0, 3.0, 20.0, 10.0, 40.0, 30.0]);
    }

    #[test]
    fn normalisation_maps_0_and_255_to_minus_one_and_one() {
        let mut image = RgbImage::new(112, 112);
        image.put_pixel(0, 0, image::Rgb([0, 255, 51]));
        let face = normalize(&image);
        let plane = 112 * 112;
        assert_eq!(face[0], -1.0);
        assert_eq!(face[plane], 1.0);
        assert!((face[2 * plane] - (51.0 - 127.5) / 127.5).abs() < 1e-7);
        // An untouched pixel (value 0) of the green plane.
        assert_eq!(face[plane + 1], -1.0);
    }

    #[test]
    fn grey_images_are_replicated_to_three_channels() {
        let mut grey = image::GrayImage::new(4, 4);
        grey.put_pixel(1, 2, image::Luma([200]));
        let mut png = Vec::new();
        image::DynamicImage::ImageLuma8(grey)
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let rgb = decode(&png).unwrap();
        assert_eq!(rgb.get_pixel(1, 2).0, [200, 200, 200]);
    }

    #[test]
    fn garbage_bytes_are_a_decode_error() {
        assert!(matches!(
            decode(b"not an image"),
            Err(PreprocessError::Decode(_))
        ));
    }
}
