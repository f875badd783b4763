//! The browser's side of the page that is not layout: choosing where the network runs (WebGPU
//! or burn's CPU backend compiled to WebAssembly), reading files and the app's own assets, the
//! clock, yielding to the browser so that status lines paint, and the `window.__elasticface`
//! hook that lets tests read what the page computed.

use burn::tensor::Device;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

/// Where the recognition network runs.
#[derive(Clone, Debug, PartialEq)]
pub struct Backend {
    /// `webgpu` or `cpu`, for tests and styling.
    pub kind: &'static str,
    /// What the user reads.
    pub label: String,
}

/// WebGPU when the browser offers an adapter, burn's `flex` CPU backend otherwise (or when the
/// page's address asks for `?backend=cpu`).
pub async fn choose_device() -> (Device, Backend) {
    let forced_cpu = web_sys::window()
        .and_then(|w| w.location().search().ok())
        .is_some_and(|search| search.contains("backend=cpu"));
    if forced_cpu {
        return (
            Device::flex(),
            cpu_backend("the address asks for the CPU".into()),
        );
    }
    match Device::wgpu_options().init_async().await {
        Ok(device) => (
            device,
            Backend {
                kind: "webgpu",
                label: "WebGPU".into(),
            },
        ),
        Err(error) => (Device::flex(), cpu_backend(format!("no WebGPU: {error}"))),
    }
}

fn cpu_backend(reason: String) -> Backend {
    Backend {
        kind: "cpu",
        label: format!("CPU (burn flex in WebAssembly, one thread; {reason})"),
    }
}

/// The bytes of a file the user picked or dropped.
pub async fn read_file(file: &web_sys::File) -> Result<Vec<u8>, String> {
    let buffer = JsFuture::from(file.array_buffer())
        .await
        .map_err(|e| format!("cannot read {}: {}", file.name(), describe(&e)))?;
    Ok(js_sys::Uint8Array::new(&buffer).to_vec())
}

/// One of the app's own files, by a path relative to the page.
pub async fn fetch_asset(path: &str) -> Result<Vec<u8>, String> {
    let window = web_sys::window().ok_or("no window")?;
    let response = JsFuture::from(window.fetch_with_str(path))
        .await
        .map_err(|e| format!("cannot fetch {path}: {}", describe(&e)))?;
    let response: web_sys::Response = response
        .dyn_into()
        .map_err(|_| format!("fetching {path} gave no response"))?;
    if !response.ok() {
        return Err(format!("{path}: HTTP {}", response.status()));
    }
    let buffer = response.array_buffer().map_err(|e| describe(&e))?;
    let buffer = JsFuture::from(buffer)
        .await
        .map_err(|e| format!("cannot read {path}: {}", describe(&e)))?;
    Ok(js_sys::Uint8Array::new(&buffer).to_vec())
}

/// Milliseconds on the page's clock.
pub fn now_ms() -> f64 {
    web_sys::window()
        .and_then(|w| w.performance())
        .map_or(0.0, |p| p.now())
}

/// Lets the browser paint before a long synchronous step (decoding, a CPU forward pass).
pub async fn yield_to_browser() {
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        if let Some(window) = web_sys::window() {
            let _ = window.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, 20);
        }
    });
    let _ = JsFuture::from(promise).await;
}

/// Publishes `json` as `window.__elasticface` for tests and curious users.
pub fn publish(json: &serde_json::Value) {
    let Some(window) = web_sys::window() else {
        return;
    };
    if let Ok(value) = js_sys::JSON::parse(&json.to_string()) {
        let _ = js_sys::Reflect::set(&window, &JsValue::from_str("__elasticface"), &value);
    }
}

fn describe(error: &JsValue) -> String {
    error
        .as_string()
        .or_else(|| {
            error
                .dyn_ref::<js_sys::Error>()
                .map(|e| String::from(e.message()))
        })
        .unwrap_or_else(|| format!("{error:?}"))
}
