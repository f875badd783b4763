//! Converts facenet-pytorch's MTCNN weights (`pnet.pt`, `rnet.pt`, `onet.pt`, PyTorch state
//! dicts) into the single safetensors file that `Mtcnn::load` reads from bytes, in burn's
//! layout (dense weights transposed). Run once by hand; see `assets/mtcnn/README.md`:
//!
//! ```sh
//! cargo run -p elasticface-core --example convert_mtcnn -- <folder with the .pt files> \
//!     assets/mtcnn/mtcnn.safetensors
//! ```

use std::error::Error;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::{ModuleSnapshot, PytorchStore, SafetensorsStore};
use burn::tensor::Device;
use elasticface_core::mtcnn::MtcnnNetworks;

/// Loads one state dict into `network`, refusing missing, unexpected or mis-shaped tensors.
fn load_state_dict<M: Module>(network: &mut M, path: &Path) -> Result<(), Box<dyn Error>> {
    let mut store = PytorchStore::from_file(path).allow_partial(true);
    let result = network
        .load_from(&mut store)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if !result.missing.is_empty() || !result.unused.is_empty() || !result.errors.is_empty() {
        return Err(format!(
            "{}: missing {:?}, unexpected {:?}, errors {:?}",
            path.display(),
            result.missing,
            result.unused,
            result.errors
        )
        .into());
    }
    println!("{}: {} tensors", path.display(), result.applied.len());
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let [folder, output] = arguments.as_slice() else {
        return Err("usage: convert_mtcnn <folder with pnet.pt, rnet.pt, onet.pt> <output>".into());
    };
    let folder = PathBuf::from(folder);
    let device = Device::flex();
    let mut networks = MtcnnNetworks::new(&device);
    load_state_dict(&mut networks.pnet, &folder.join("pnet.pt"))?;
    load_state_dict(&mut networks.rnet, &folder.join("rnet.pt"))?;
    load_state_dict(&mut networks.onet, &folder.join("onet.pt"))?;

    let mut store = SafetensorsStore::from_bytes(None)
        .metadata(
            "source",
            "facenet-pytorch 2.6.0, facenet_pytorch/data/{pnet,rnet,onet}.pt",
        )
        .metadata("license", "MIT, Copyright (c) 2019 Timothy Esler");
    networks.save_into(&mut store)?;
    std::fs::write(output, store.get_bytes()?)?;
    println!("wrote {output}");
    Ok(())
}
