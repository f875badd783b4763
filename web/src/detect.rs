//! Finding faces in a photo: the one seam between the page and a face detector. The page calls
//! [`Detector::detect`] on the working-size photo and shows every face found; with no detector
//! (or no face) it falls back to the two-eye manual path.
//!
//! Core's MTCNN port (`elasticface_core::mtcnn`) is not part of the library yet; until it is, the
//! detector finds nothing and every photo takes the manual path. Wiring it in means loading its
//! weights in [`Detector::load`] and calling it in [`Detector::detect`].

use image::RgbImage;

/// A face found in a photo, in the photo's pixels.
#[derive(Clone, Debug, PartialEq)]
pub struct DetectedFace {
    /// Left, top, right, bottom.
    pub bbox: [f32; 4],
    /// The detector's confidence, 0 to 1.
    pub score: f32,
    /// Eye centres (left and right in the picture), nose tip, mouth corners.
    pub landmarks: [[f64; 2]; 5],
}

/// The face detector the page uses.
#[derive(Default)]
pub struct Detector {
    available: bool,
}

impl Detector {
    /// The detector, when this build has one.
    pub async fn load() -> Result<Self, String> {
        Ok(Self { available: false })
    }

    /// Whether faces can be found automatically at all.
    pub fn is_available(&self) -> bool {
        self.available
    }

    /// Faces in `photo`, most confident first; empty when there is no detector.
    pub fn detect(&self, photo: &RgbImage) -> Vec<DetectedFace> {
        let _ = photo;
        Vec::new()
    }
}
