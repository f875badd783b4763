//! The page's face pipeline without any browser in it: decode a photo and shrink it to a working
//! size, align a face from detected landmarks or from two clicked eyes, embed the aligned crop
//! with the recognition model, and turn two embeddings into a score and a verdict. The same code
//! runs in the browser and in the native `reference` example that the browser tests compare with.

use base64::prelude::{BASE64_STANDARD, Engine as _};
use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use elasticface_core::align;
use elasticface_core::backbone::{Backbone, INPUT_SIZE};
use elasticface_core::export::{self, ModelCard};
use elasticface_core::preprocess::{self, FACE_LEN};
use elasticface_core::verify;
use image::{ImageReader, Limits, RgbImage};

/// Longest side of the image the page works on (display, detection, alignment). A 6000-pixel
/// photo is shrunk to this once, right after decoding, so nothing later scales with its size.
pub const WORKING_SIDE: u32 = 1600;

/// Largest photo accepted, in pixels (100 megapixels, 300 MB of RGB once decoded).
pub const MAX_PIXELS: u64 = 100_000_000;

/// A decoded photo at working size.
#[derive(Clone, Debug)]
pub struct Photo {
    /// The pixels, longest side at most [`WORKING_SIDE`].
    pub image: RgbImage,
    /// Width and height of the file as decoded.
    pub original_size: (u32, u32),
}

impl Photo {
    /// How much the working image was shrunk (1 when it was not).
    pub fn shrink_factor(&self) -> f64 {
        f64::from(self.original_size.0) / f64::from(self.image.width())
    }
}

/// Decodes JPEG, PNG, WebP (and the other formats core reads) and shrinks the result so that its
/// longest side is at most [`WORKING_SIDE`]. The message of an error is meant for the user.
pub fn decode_photo(bytes: &[u8]) -> Result<Photo, String> {
    if bytes.is_empty() {
        return Err("the file is empty".into());
    }
    let mut reader = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("cannot read the file: {e}"))?;
    if reader.format().is_none() {
        return Err("this is not a JPEG, PNG or WebP image".into());
    }
    let mut limits = Limits::default();
    limits.max_alloc = Some(4 * MAX_PIXELS);
    reader.limits(limits);
    let (width, height) = reader
        .into_dimensions()
        .map_err(|e| format!("cannot decode the image: {e}"))?;
    if u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(format!(
            "the image is {width}×{height} pixels; this page takes up to {} megapixels",
            MAX_PIXELS / 1_000_000
        ));
    }

    let image = preprocess::decode(bytes).map_err(|e| e.to_string())?;
    let original_size = image.dimensions();
    let longest = original_size.0.max(original_size.1);
    let image = if longest > WORKING_SIDE {
        let scale = f64::from(WORKING_SIDE) / f64::from(longest);
        let width = ((f64::from(original_size.0) * scale).round() as u32).max(1);
        let height = ((f64::from(original_size.1) * scale).round() as u32).max(1);
        // `thumbnail` averages whole source pixels per output pixel: fast on huge photos and
        // free of the aliasing a plain subsample would give.
        image::imageops::thumbnail(&image, width, height)
    } else {
        image
    };
    Ok(Photo {
        image,
        original_size,
    })
}

/// The aligned 112×112 face from two eye centres clicked on `photo` (in its pixels), in either
/// order: the one further left in the picture is taken as the template's left eye.
pub fn align_from_eyes(photo: &RgbImage, first: [f64; 2], second: [f64; 2]) -> Option<RgbImage> {
    let (left, right) = if first[0] <= second[0] {
        (first, second)
    } else {
        (second, first)
    };
    let to_crop = align::eyes_to_template(left, right)?;
    Some(align::warp(photo, &to_crop, INPUT_SIZE as u32))
}

/// A recognition model ready to embed faces.
pub struct Recognizer {
    /// The backbone in inference mode.
    pub backbone: Backbone,
    /// What the model file says about itself.
    pub card: ModelCard,
    /// Where it runs.
    pub device: Device,
}

impl Recognizer {
    /// Loads a model file written by `elasticface export` onto `device`.
    pub fn load(bytes: &[u8], device: &Device) -> Result<Self, String> {
        let (backbone, card) = export::import_backbone(bytes, device).map_err(|e| e.to_string())?;
        Ok(Self {
            backbone: backbone.valid(),
            card,
            device: device.clone(),
        })
    }

    /// The flip-summed unit embedding of an aligned crop, as the trainer's evaluation computes
    /// it: L2-normalise(embedding(crop) + embedding(mirrored crop)). Asynchronous because a
    /// WebGPU device can only be read back asynchronously.
    ///
    /// # Shapes
    /// - `crop`: a 112×112 RGB image (other sizes are resized)
    /// - output: `[embedding_size]`
    pub async fn embed(&self, crop: &RgbImage) -> Result<Vec<f32>, String> {
        let face = preprocess::normalize(crop);
        let mut mirrored = face.clone();
        preprocess::flip_horizontal(&mut mirrored, 3, INPUT_SIZE, INPUT_SIZE);
        let mut input = Vec::with_capacity(2 * FACE_LEN);
        input.extend_from_slice(&face);
        input.extend_from_slice(&mirrored);

        let faces = Tensor::<4>::from_data(
            TensorData::new(input, [2, 3, INPUT_SIZE, INPUT_SIZE]),
            &self.device,
        );
        let output = self.backbone.forward(faces);
        let [_, size] = output.dims();
        let values = output
            .into_data_async()
            .await
            .map_err(|e| format!("cannot read the embedding back: {e:?}"))?
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| format!("the embedding is not float: {e:?}"))?;
        Ok(verify::flip_sum_embedding(
            &values[..size],
            &values[size..2 * size],
        ))
    }
}

/// Cosine similarity of two embeddings (0 when either is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let denominator = norm(a) * norm(b);
    if denominator == 0.0 {
        0.0
    } else {
        dot / denominator
    }
}

/// The cosine similarity at which the model's card puts the line between "same person" and
/// "different people". The card stores a squared L2 distance `t` between unit embeddings, and
/// ‖a − b‖² = 2 − 2·cos, so the line is at cos = 1 − t / 2.
pub fn cosine_threshold(card: &ModelCard) -> Option<f64> {
    card.threshold.map(|t| 1.0 - t / 2.0)
}

/// What the page concludes from a score.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// At or above the model's threshold.
    SamePerson,
    /// Below it.
    DifferentPeople,
    /// The model file has no threshold.
    NoThreshold,
}

impl Verdict {
    /// Compares `score` (a cosine similarity) with the card's threshold.
    pub fn of(score: f64, card: &ModelCard) -> Self {
        match cosine_threshold(card) {
            Some(line) if score >= line => Verdict::SamePerson,
            Some(_) => Verdict::DifferentPeople,
            None => Verdict::NoThreshold,
        }
    }

    /// The words shown to the user.
    pub fn words(self) -> &'static str {
        match self {
            Verdict::SamePerson => "same person",
            Verdict::DifferentPeople => "different people",
            Verdict::NoThreshold => "no verdict: the model file has no threshold",
        }
    }
}

/// A few plain sentences on what a score means for this model, from its card.
pub fn explain(card: &ModelCard) -> Vec<String> {
    let architecture = serde_json::to_value(card.backbone.architecture)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let mut lines = vec![format!(
        "The score is the cosine similarity of the two faces' {}-value embeddings from a \
         {architecture} network: 1 means identical, 0 unrelated; higher means more alike.",
        card.backbone.embedding_size
    )];
    if !card.trained_with.is_empty() {
        lines.push(format!("The model was trained with {}.", card.trained_with));
    }
    match cosine_threshold(card) {
        Some(line) => lines.push(format!(
            "This model calls two faces the same person when the score is at least {line:.3} \
             (a squared distance of {:.2} between the unit embeddings).",
            card.threshold.unwrap_or_default()
        )),
        None => lines.push(
            "The model file sets no threshold, so the page shows the score without a verdict."
                .into(),
        ),
    }
    if !card.threshold_note.is_empty() {
        // The card's note is a clause ("chosen by …", "set by hand …").
        let note = card.threshold_note.trim_end_matches('.');
        lines.push(format!("The threshold was {note}."));
    }
    match (card.accuracy, card.false_accept_rate) {
        (Some(accuracy), Some(far)) => lines.push(format!(
            "Measured at that threshold: {:.1} % of verification pairs judged right, and {:.2} % \
             of pairs of different people wrongly called the same person.",
            accuracy * 100.0,
            far * 100.0
        )),
        (Some(accuracy), None) => lines.push(format!(
            "Measured at that threshold: {:.1} % of verification pairs judged right.",
            accuracy * 100.0
        )),
        (None, Some(far)) => lines.push(format!(
            "Measured at that threshold: {:.2} % of pairs of different people wrongly called \
             the same person.",
            far * 100.0
        )),
        (None, None) => lines.push("The model file records no measured accuracy.".into()),
    }
    lines
}

/// The crop as PNG bytes (lossless, so a test can recompute its embedding from exactly these
/// pixels).
pub fn encode_png(image: &RgbImage) -> Vec<u8> {
    let mut bytes = Vec::new();
    image
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .expect("PNG encoding of an in-memory RGB image does not fail");
    bytes
}

/// The crop as a `data:` address of its PNG, for an `<img>` (no request leaves the page).
pub fn png_data_url(image: &RgbImage) -> String {
    format!(
        "data:image/png;base64,{}",
        BASE64_STANDARD.encode(encode_png(image))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use elasticface_core::backbone::{Architecture, BackboneConfig};

    fn card(threshold: Option<f64>) -> ModelCard {
        ModelCard {
            backbone: BackboneConfig::new(Architecture::MobileFaceNet),
            threshold,
            threshold_note: String::new(),
            trained_with: String::new(),
            accuracy: None,
            false_accept_rate: None,
        }
    }

    #[test]
    fn the_verdict_line_is_the_cosine_of_the_squared_distance_threshold() {
        // t = 1.2 → cos = 1 − 0.6 = 0.4.
        let card = card(Some(1.2));
        assert!((cosine_threshold(&card).unwrap() - 0.4).abs() < 1e-12);
        assert_eq!(Verdict::of(0.41, &card), Verdict::SamePerson);
        assert_eq!(Verdict::of(0.39, &card), Verdict::DifferentPeople);
        assert_eq!(
            Verdict::of(0.9, &super::tests::card(None)),
            Verdict::NoThreshold
        );
    }

    #[test]
    fn cosine_of_hand_made_vectors() {
        assert!((cosine(&[1.0, 0.0], &[1.0, 1.0]) - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-9);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 1.0]), 0.0);
    }

    #[test]
    fn huge_photos_are_shrunk_to_the_working_size_and_garbage_is_refused() {
        let image = RgbImage::from_pixel(4000, 1000, image::Rgb([10, 20, 30]));
        let photo = decode_photo(&encode_png(&image)).unwrap();
        assert_eq!(photo.image.dimensions(), (1600, 400));
        assert_eq!(photo.original_size, (4000, 1000));
        assert!((photo.shrink_factor() - 2.5).abs() < 1e-12);
        assert!(decode_photo(b"definitely not an image").is_err());
        assert!(decode_photo(b"").is_err());
    }
}
