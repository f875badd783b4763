//! Finding faces in a photo: the one seam between the page and a face detector. The page calls
//! [`Detector::detect`] on the working-size photo and shows every face found; with no detector
//! (weights missing) or no face it falls back to the two-eye manual path.
//!
//! The detector is core's MTCNN. It runs on burn's CPU backend even when WebGPU is there: its
//! many small per-scale passes were not measured on WebGPU yet, and the CPU keeps it predictable.

use burn::tensor::Device;
use elasticface_core::mtcnn::{Mtcnn, MtcnnConfig};
use image::RgbImage;

pub use elasticface_core::mtcnn::DetectedFace;

/// Longest side MTCNN looks at; larger working images are shrunk for detection only (faces
/// down to 20 pixels at this size are found).
const DETECTION_SIDE: u32 = 800;

/// The face detector the page uses.
pub struct Detector {
    mtcnn: Mtcnn,
}

impl Detector {
    /// MTCNN from the bytes of `assets/mtcnn/mtcnn.safetensors`.
    pub fn load(bytes: &[u8]) -> Result<Self, String> {
        let mtcnn = Mtcnn::load(bytes, &Device::flex())
            .map_err(|e| e.to_string())?
            .with_config(MtcnnConfig {
                max_side: Some(DETECTION_SIDE),
                ..MtcnnConfig::default()
            });
        Ok(Self { mtcnn })
    }

    /// Faces in `photo`, largest first.
    pub async fn detect(&self, photo: &RgbImage) -> Result<Vec<DetectedFace>, String> {
        self.mtcnn
            .detect_async(photo)
            .await
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use elasticface_core::align::{ARCFACE_TEMPLATE, landmarks_to_template};

    use super::*;
    use crate::pipeline::decode_photo;

    fn shared_data() -> PathBuf {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data");
        assert!(
            path.join("photos").is_dir(),
            "the face data sets are missing: expected {} beside the repository",
            path.join("photos").display()
        );
        path
    }

    /// Runs a future that never waits on anything outside itself (burn's CPU backend).
    fn block_on<F: Future>(future: F) -> F::Output {
        let mut future = pin!(future);
        let mut context = Context::from_waker(Waker::noop());
        loop {
            if let Poll::Ready(value) = future.as_mut().poll(&mut context) {
                return value;
            }
        }
    }

    /// The page's path on every unlabeled press photo: decode and shrink to the working size,
    /// detect at the page's detection size, align the largest face. Nobody tuned anything on
    /// these photos; what is checked is what a user would call sensible: every photo has a
    /// person in it, so a face is found; the largest face's landmarks sit inside its box in an
    /// upright order; and the five points are a face's shape, so the similarity that maps them
    /// onto the ArcFace template leaves each within a few pixels of its template point.
    #[test]
    fn every_press_photo_gives_an_upright_face_that_fits_the_template() {
        let folder = shared_data().join("photos");
        let weights_path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/mtcnn/mtcnn.safetensors");
        let weights = std::fs::read(&weights_path).unwrap();
        let detector = Detector::load(&weights).unwrap();

        let mut files: Vec<PathBuf> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|e| e == "jpg"))
            .collect();
        files.sort();
        assert!(
            files.len() >= 60,
            "{} photos in {}",
            files.len(),
            folder.display()
        );

        let mut several = 0;
        let mut worst_fit: f64 = 0.0;
        for file in &files {
            let name = file.file_name().unwrap().to_string_lossy();
            let photo = decode_photo(&std::fs::read(file).unwrap())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let faces = block_on(detector.detect(&photo.image)).unwrap();
            assert!(!faces.is_empty(), "{name}: no face found");
            if faces.len() > 1 {
                several += 1;
            }
            let face = &faces[0];
            let [left, top, right, bottom] = face.bbox.map(f64::from);
            let width = right - left;
            let slack = 0.1 * width;
            for [x, y] in face.landmarks {
                assert!(
                    (left - slack..=right + slack).contains(&x)
                        && (top - slack..=bottom + slack).contains(&y),
                    "{name}: landmark ({x:.0}, {y:.0}) outside the box {:?}",
                    face.bbox
                );
            }
            let [left_eye, right_eye, nose, mouth_left, mouth_right] = face.landmarks;
            assert!(left_eye[0] < right_eye[0], "{name}: eyes swapped");
            assert!(
                mouth_left[0] < mouth_right[0],
                "{name}: mouth corners swapped"
            );
            let eyes_y = (left_eye[1] + right_eye[1]) / 2.0;
            let mouth_y = (mouth_left[1] + mouth_right[1]) / 2.0;
            assert!(
                eyes_y < nose[1] && nose[1] < mouth_y,
                "{name}: eyes, nose and mouth not in upright order: {:?}",
                face.landmarks
            );

            let to_crop = landmarks_to_template(&face.landmarks).unwrap();
            let fit = face
                .landmarks
                .iter()
                .zip(ARCFACE_TEMPLATE)
                .map(|(&point, target)| {
                    let [x, y] = to_crop.apply(point);
                    (x - target[0]).hypot(y - target[1])
                })
                .fold(0.0, f64::max);
            worst_fit = worst_fit.max(fit);
            eprintln!(
                "{name}: {} faces, largest {width:.0} px wide, template fit within {fit:.1} px",
                faces.len()
            );
        }
        eprintln!("{several} photos with several faces; worst template fit {worst_fit:.1} px");
        // The data set's description: two of the photos show several people.
        assert!(several >= 2, "only {several} photos with several faces");
        // Measured on these 64 photos: 1.7 to 9.0 pixels on the 112-pixel crop (a turned head
        // moves the nose off the line between the eyes and the mouth). Points that came from
        // something other than a face would not fit a face's shape this well.
        assert!(worst_fit < 15.0, "worst template fit {worst_fit:.1} px");
    }
}
