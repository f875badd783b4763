//! InsightFace verification sets (`lfw.bin`, `agedb_30.bin`, `cfp_fp.bin`, `calfw.bin`,
//! `cplfw.bin`, ...): a Python pickle of `(images, is_same)`, where image 2k and 2k + 1 form pair
//! k. Three layouts are in circulation: images as Python 2 `str`, as Python 3 `bytes`, or as
//! numpy uint8 arrays holding the encoded bytes. The pickle is parsed by `serde-pickle`; this
//! file only takes the images and flags out of what it returns. Evaluation reads these next to
//! pair lists.

use std::io::BufReader;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_pickle::{DeOptions, Value};

/// The contents of a `.bin` verification set.
pub struct VerificationBin {
    /// Encoded images (JPEG or PNG bytes), two per pair.
    pub images: Vec<Vec<u8>>,
    /// Whether pair k shows one identity.
    pub same: Vec<bool>,
}

/// A short name for a pickled value's kind, for error messages (never its contents).
fn kind(value: &Value) -> String {
    match value {
        Value::None => "None".into(),
        Value::Bool(_) => "bool".into(),
        Value::I64(_) | Value::Int(_) => "int".into(),
        Value::F64(_) => "float".into(),
        Value::Bytes(bytes) => format!("bytes of length {}", bytes.len()),
        Value::String(_) => "str".into(),
        Value::List(items) => format!("list of {}", items.len()),
        Value::Tuple(items) => format!("tuple of {}", items.len()),
        Value::Set(_) | Value::FrozenSet(_) => "set".into(),
        Value::Dict(_) => "dict".into(),
    }
}

fn sequence(value: Value, what: &str) -> Result<Vec<Value>> {
    match value {
        Value::List(items) | Value::Tuple(items) => Ok(items),
        other => bail!("{what} should be a list, found {}", kind(&other)),
    }
}

/// Number of elements of a pickled shape tuple.
fn element_count(shape: &Value) -> Option<usize> {
    match shape {
        Value::Tuple(dims) | Value::List(dims) => {
            dims.iter().try_fold(1usize, |count, dim| match dim {
                Value::I64(dim) => usize::try_from(*dim)
                    .ok()
                    .and_then(|dim| count.checked_mul(dim)),
                _ => None,
            })
        }
        _ => None,
    }
}

/// The raw bytes of a numpy array as serde-pickle leaves it (with its restore state kept):
/// either the state of `_reconstruct` + BUILD, `(1, shape, dtype, fortran, raw)`, or the
/// arguments of protocol 5's `_frombuffer`, `(raw, dtype, shape, order)`. Only arrays of
/// one-byte elements hold encoded images; the element count tells them apart.
fn numpy_bytes(items: Vec<Value>) -> std::result::Result<Vec<u8>, String> {
    let (raw, shape) = match <[Value; 5]>::try_from(items) {
        Ok([_, shape, _, _, Value::Bytes(raw)]) => (raw, shape),
        Ok(_) => return Err("a 5-tuple that is not a numpy array's state".into()),
        Err(items) => match <[Value; 4]>::try_from(items) {
            Ok([Value::Bytes(raw), _, shape, _]) => (raw, shape),
            Ok(_) => return Err("a 4-tuple that is not a numpy array".into()),
            Err(items) => {
                return Err(format!(
                    "a tuple of {} that is not a numpy array",
                    items.len()
                ));
            }
        },
    };
    match element_count(&shape) {
        Some(count) if count == raw.len() => Ok(raw),
        Some(count) => Err(format!(
            "a numpy array of {count} elements in {} bytes: not uint8",
            raw.len()
        )),
        None => Err("a numpy array whose shape cannot be read".into()),
    }
}

fn image_bytes(value: Value) -> std::result::Result<Vec<u8>, String> {
    match value {
        Value::Bytes(bytes) => Ok(bytes),
        Value::Tuple(items) => numpy_bytes(items),
        other => Err(format!(
            "expected bytes or a uint8 array, found {}",
            kind(&other)
        )),
    }
}

fn flag(value: &Value) -> std::result::Result<bool, String> {
    match value {
        Value::Bool(flag) => Ok(*flag),
        Value::I64(0) => Ok(false),
        Value::I64(1) => Ok(true),
        // A numpy bool scalar: (dtype, one byte).
        Value::Tuple(items) if items.len() == 2 => match &items[1] {
            Value::Bytes(byte) if byte.len() == 1 && byte[0] <= 1 => Ok(byte[0] == 1),
            _ => Err("a tuple that is not a numpy bool".into()),
        },
        other => Err(format!("expected a bool, found {}", kind(other))),
    }
}

/// Reads a `.bin` verification set in any of its three layouts.
pub fn read(path: &Path) -> Result<VerificationBin> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot open verification set {}", path.display()))?;
    // Kept restore state carries numpy's arrays through; unresolved globals (numpy's classes)
    // become None; and the workaround for serde-pickle's memo counting keeps repeated dtypes.
    let options = DeOptions::new()
        .keep_restore_state()
        .replace_unresolved_globals()
        .replace_recursive_structures();
    let root = serde_pickle::value_from_reader(BufReader::new(file), options)
        .with_context(|| format!("{} is not a readable pickle", path.display()))?;
    let context = |message: String| anyhow::anyhow!("{}: {message}", path.display());

    let [images, same] =
        <[Value; 2]>::try_from(sequence(root, "the pickle").map_err(|e| context(e.to_string()))?)
            .map_err(|items| {
            context(format!(
                "expected a pair (images, is_same), found {} items",
                items.len()
            ))
        })?;
    let images = sequence(images, "the images")
        .map_err(|e| context(e.to_string()))?
        .into_iter()
        .enumerate()
        .map(|(index, value)| {
            image_bytes(value).map_err(|e| context(format!("image {index}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let same = match same {
        // The flags as one numpy bool array.
        Value::Tuple(items) if items.len() >= 4 => numpy_bytes(items)
            .map_err(|e| context(format!("is_same: {e}")))?
            .into_iter()
            .map(|byte| byte != 0)
            .collect(),
        other => sequence(other, "is_same")
            .map_err(|e| context(e.to_string()))?
            .iter()
            .enumerate()
            .map(|(index, value)| {
                flag(value).map_err(|e| context(format!("is_same[{index}]: {e}")))
            })
            .collect::<Result<Vec<_>>>()?,
    };
    if images.len() != 2 * same.len() {
        bail!(
            "{}: {} images for {} pairs (expected two images per pair)",
            path.display(),
            images.len(),
            same.len()
        );
    }
    if same.is_empty() {
        bail!("{} holds no pairs", path.display());
    }
    Ok(VerificationBin { images, same })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_numpy_layout_of_insightfaces_small_lfw_is_read() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/bins/small_lfw.bin");
        assert!(
            path.is_file(),
            "the face data sets are missing: expected {}",
            path.display()
        );
        let set = read(&path).unwrap();
        // The data set's README: 20 JPEG images, 10 pairs, all the same identity.
        assert_eq!(set.images.len(), 20);
        assert_eq!(set.same, vec![true; 10]);
        assert!(
            set.images
                .iter()
                .all(|image| image.starts_with(&[0xFF, 0xD8, 0xFF, 0xE0]))
        );
    }

    #[test]
    fn python_3_bytes_are_read_and_broken_files_are_named() {
        // pickle.dumps(([b'ab', b'cd'], [False]), protocol=3)
        let pickle: &[u8] = b"\x80\x03]q\x00(C\x02abq\x01C\x02cdq\x02e]q\x03\x89a\x86q\x04.";
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.bin");
        std::fs::write(&path, pickle).unwrap();
        let set = read(&path).unwrap();
        assert_eq!(set.images, vec![b"ab".to_vec(), b"cd".to_vec()]);
        assert_eq!(set.same, vec![false]);

        std::fs::write(&path, &pickle[..20]).unwrap();
        let error = format!("{:#}", read(&path).err().unwrap());
        assert!(
            error.contains("tiny.bin") && error.contains("not a readable pickle"),
            "{error}"
        );
    }
}
