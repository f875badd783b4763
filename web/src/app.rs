//! The compare-two-photos page (Leptos, client-side only): two photo panes, each turning a picked
//! or dropped photo into an aligned 112×112 face and its embedding, and the comparison of the two
//! embeddings at the model's threshold. Everything runs in the page; the only requests it makes
//! are for its own files (the code and the built-in model).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use burn::tensor::Device;
use elasticface_core::align;
use elasticface_core::export::ModelCard;
use image::RgbImage;
use leptos::prelude::*;
use leptos::task::spawn_local;
use serde_json::json;
use wasm_bindgen::{Clamped, JsCast};
use web_sys::{CanvasRenderingContext2d, HtmlCanvasElement, ImageData};

use crate::browser::{self, Backend};
use crate::detect::{DetectedFace, Detector};
use crate::pipeline::{self, Photo, Recognizer, Verdict};

/// Where the built-in model is served from (Trunk copies `assets/model/` to `model/`).
const BUILTIN_MODEL: &str = "model/model.safetensors";

/// Where the face detector's weights are served from (a copy of `assets/mtcnn/`).
const DETECTOR_WEIGHTS: &str = "mtcnn/mtcnn.safetensors";

/// What the user is asked when no face was found automatically.
const EYES_HINT: &str = "Click the centre of each eye on the photo.";

thread_local! {
    // The page is single-threaded; the network and device are not `Send`, so they live here
    // rather than in signals.
    static DEVICE: RefCell<Option<Device>> = const { RefCell::new(None) };
    static RECOGNIZER: RefCell<Option<Rc<Recognizer>>> = const { RefCell::new(None) };
    static DETECTOR: RefCell<Option<Rc<Detector>>> = const { RefCell::new(None) };
}

/// The recognition model's state.
#[derive(Clone, Debug, PartialEq)]
enum ModelStatus {
    Loading(String),
    Ready(ModelInfo),
    Unavailable(String),
}

/// The model in use: its name, card and a version that changes with every model loaded.
#[derive(Clone, Debug, PartialEq)]
struct ModelInfo {
    name: String,
    card: ModelCard,
    version: u32,
}

/// An aligned face and its picture for the page.
struct Crop {
    image: RgbImage,
    data_url: String,
}

/// A face's embedding, how long it took and from which model.
struct Embedding {
    values: Vec<f32>,
    millis: f64,
    model_version: u32,
}

/// One photo pane's state.
#[derive(Clone, Copy)]
struct Pane {
    index: usize,
    file_name: RwSignal<String>,
    photo: RwSignal<Option<Arc<Photo>>>,
    faces: RwSignal<Vec<DetectedFace>>,
    chosen_face: RwSignal<Option<usize>>,
    manual: RwSignal<bool>,
    eyes: RwSignal<Vec<[f64; 2]>>,
    crop: RwSignal<Option<Arc<Crop>>>,
    embedding: RwSignal<Option<Arc<Embedding>>>,
    status: RwSignal<String>,
    error: RwSignal<Option<String>>,
    /// Bumped on every new photo, so that work for an older photo is dropped when it finishes.
    generation: RwSignal<u32>,
}

impl Pane {
    fn new(index: usize) -> Self {
        Self {
            index,
            file_name: RwSignal::new(String::new()),
            photo: RwSignal::new(None),
            faces: RwSignal::new(Vec::new()),
            chosen_face: RwSignal::new(None),
            manual: RwSignal::new(false),
            eyes: RwSignal::new(Vec::new()),
            crop: RwSignal::new(None),
            embedding: RwSignal::new(None),
            status: RwSignal::new(String::new()),
            error: RwSignal::new(None),
            generation: RwSignal::new(0),
        }
    }

    fn clear(&self) {
        self.photo.set(None);
        self.faces.set(Vec::new());
        self.chosen_face.set(None);
        self.manual.set(false);
        self.eyes.set(Vec::new());
        self.crop.set(None);
        self.embedding.set(None);
        self.status.set(String::new());
        self.error.set(None);
    }
}

/// The whole page's state.
#[derive(Clone, Copy)]
struct Page {
    panes: [Pane; 2],
    backend: RwSignal<Option<Backend>>,
    model: RwSignal<ModelStatus>,
    model_error: RwSignal<Option<String>>,
    detector_error: RwSignal<Option<String>>,
}

/// Two embeddings compared.
#[derive(Clone, Debug, PartialEq)]
struct Comparison {
    score: f64,
    verdict: Verdict,
    threshold: Option<f64>,
    explanation: Vec<String>,
    millis: [f64; 2],
}

/// The page.
#[component]
pub fn App() -> impl IntoView {
    let page = Page {
        panes: [Pane::new(0), Pane::new(1)],
        backend: RwSignal::new(None),
        model: RwSignal::new(ModelStatus::Loading("Starting…".into())),
        model_error: RwSignal::new(None),
        detector_error: RwSignal::new(None),
    };
    spawn_local(start(page));

    let comparison = Memo::new(move |_| compare(page));
    Effect::new(move |_| publish(page, comparison.get()));

    view! {
        <main>
            <header>
                <h1>"Compare two photos"</h1>
                <p class="privacy" data-testid="privacy">
                    "Everything happens in this page: your photos are never uploaded."
                </p>
            </header>
            <ModelBar page=page />
            <div class="panes">
                <PhotoPane page=page pane=page.panes[0] />
                <PhotoPane page=page pane=page.panes[1] />
            </div>
            <ResultPanel comparison=comparison />
        </main>
    }
}

/// The model in use, where it runs, and a picker for another model file.
#[component]
fn ModelBar(page: Page) -> impl IntoView {
    let status = move || match page.model.get() {
        ModelStatus::Loading(what) => what,
        ModelStatus::Ready(info) => format!(
            "Model: {} ({}, {}-value embeddings).",
            info.name,
            architecture_name(&info.card),
            info.card.backbone.embedding_size
        ),
        ModelStatus::Unavailable(why) => why,
    };
    let state = move || match page.model.get() {
        ModelStatus::Loading(_) => "loading",
        ModelStatus::Ready(_) => "ready",
        ModelStatus::Unavailable(_) => "unavailable",
    };
    let backend_kind = move || page.backend.get().map_or("", |b| b.kind);
    let backend_label = move || {
        page.backend
            .get()
            .map_or_else(|| "choosing…".to_string(), |b| b.label)
    };
    let on_model_file = move |ev: leptos::ev::Event| {
        let input: web_sys::HtmlInputElement = event_target(&ev);
        if let Some(file) = input.files().and_then(|files| files.get(0)) {
            spawn_local(load_model_file(page, file));
        }
        input.set_value("");
    };

    view! {
        <section class="model-bar">
            <p id="model-status" data-testid="model-status" data-state=state>{status}</p>
            <p>
                "Runs on: "
                <span id="backend" data-testid="backend" data-backend=backend_kind>
                    {backend_label}
                </span>
            </p>
            <label class="button secondary">
                "Use another model file…"
                <input
                    type="file"
                    accept=".safetensors"
                    id="model-input"
                    data-testid="model-input"
                    on:change=on_model_file
                />
            </label>
            <p class="error" data-testid="model-error">{move || page.model_error.get()}</p>
            <p class="error" data-testid="detector-error">{move || page.detector_error.get()}</p>
        </section>
    }
}

/// One photo: picker, drop zone, the photo with found faces or eye marks, and the aligned crop.
#[component]
fn PhotoPane(page: Page, pane: Pane) -> impl IntoView {
    let index = pane.index;
    let canvas_ref = NodeRef::<leptos::html::Canvas>::new();
    let dragging = RwSignal::new(false);

    Effect::new(move |_| {
        let photo = pane.photo.get();
        let faces = pane.faces.get();
        let chosen = pane.chosen_face.get();
        let eyes = pane.eyes.get();
        if let (Some(canvas), Some(photo)) = (canvas_ref.get(), photo) {
            draw_photo(&canvas, &photo.image, &faces, chosen, &eyes);
        }
    });

    let on_file = move |ev: leptos::ev::Event| {
        let input: web_sys::HtmlInputElement = event_target(&ev);
        if let Some(file) = input.files().and_then(|files| files.get(0)) {
            load_photo(page, pane, file);
        }
        input.set_value("");
    };
    let on_drop = move |ev: leptos::ev::DragEvent| {
        ev.prevent_default();
        dragging.set(false);
        let file = ev
            .data_transfer()
            .and_then(|transfer| transfer.files())
            .and_then(|files| files.get(0));
        if let Some(file) = file {
            load_photo(page, pane, file);
        }
    };
    let on_click = move |ev: leptos::ev::MouseEvent| {
        let Some(canvas) = canvas_ref.get() else {
            return;
        };
        let rect = canvas.get_bounding_client_rect();
        if rect.width() <= 0.0 || rect.height() <= 0.0 {
            return;
        }
        let x = (f64::from(ev.client_x()) - rect.left()) * f64::from(canvas.width()) / rect.width();
        let y =
            (f64::from(ev.client_y()) - rect.top()) * f64::from(canvas.height()) / rect.height();
        click_photo(page, pane, [x, y]);
    };
    let toggle_manual = move |_| {
        let manual = !pane.manual.get_untracked();
        pane.manual.set(manual);
        pane.eyes.set(Vec::new());
        pane.status.set(if manual {
            EYES_HINT.into()
        } else {
            String::new()
        });
    };
    let has_photo = move || pane.photo.with(Option::is_some);
    let photo_size = move || {
        pane.photo.with(|photo| {
            photo.as_ref().map(|p| {
                let (width, height) = p.original_size;
                format!("{} · {width}×{height}", pane.file_name.get())
            })
        })
    };

    view! {
        <section
            class="pane"
            class:dragging=move || dragging.get()
            data-testid=format!("pane-{index}")
            on:dragover=move |ev: leptos::ev::DragEvent| {
                ev.prevent_default();
                dragging.set(true);
            }
            on:dragleave=move |_| dragging.set(false)
            on:drop=on_drop
        >
            <h2>{format!("Photo {}", index + 1)}</h2>
            <div class="picker">
                <label class="button">
                    "Choose a photo…"
                    <input
                        type="file"
                        accept="image/jpeg,image/png,image/webp"
                        id=format!("photo-input-{index}")
                        data-testid=format!("photo-input-{index}")
                        on:change=on_file
                    />
                </label>
                <span class="hint">"or drop one here (JPEG, PNG, WebP)"</span>
            </div>
            <p class="error" data-testid=format!("error-{index}")>{move || pane.error.get()}</p>
            <p class="status" data-testid=format!("status-{index}")>{move || pane.status.get()}</p>
            <div class="photo-frame" class:hidden=move || !has_photo()>
                <canvas
                    node_ref=canvas_ref
                    data-testid=format!("photo-canvas-{index}")
                    data-faces=move || {
                        pane.faces.with(|faces| {
                            serde_json::to_string(&faces.iter().map(|f| f.bbox).collect::<Vec<_>>())
                                .unwrap_or_default()
                        })
                    }
                    class:manual=move || pane.manual.get()
                    on:click=on_click
                ></canvas>
                <p class="caption" data-testid=format!("photo-size-{index}")>{photo_size}</p>
                <button
                    class="secondary"
                    data-testid=format!("manual-{index}")
                    on:click=toggle_manual
                >
                    {move || {
                        if pane.manual.get() { "Stop marking eyes" } else { "Mark the eyes myself" }
                    }}
                </button>
            </div>
            {move || {
                pane.crop
                    .get()
                    .map(|crop| {
                        view! {
                            <figure class="crop">
                                <img
                                    src=crop.data_url.clone()
                                    width="112"
                                    height="112"
                                    alt="aligned face"
                                    data-testid=format!("crop-{index}")
                                />
                                <figcaption>"Aligned face, 112×112"</figcaption>
                            </figure>
                        }
                    })
            }}
        </section>
    }
}

/// The score, the verdict and what they mean for this model.
#[component]
fn ResultPanel(comparison: Memo<Option<Comparison>>) -> impl IntoView {
    move || {
        let Some(result) = comparison.get() else {
            return view! {
                <section class="result empty" data-testid="result">
                    <p>"Add a face to each side to compare them."</p>
                </section>
            }
            .into_any();
        };
        let (verdict_class, verdict_key) = match result.verdict {
            Verdict::SamePerson => ("verdict same", "same"),
            Verdict::DifferentPeople => ("verdict different", "different"),
            Verdict::NoThreshold => ("verdict", "none"),
        };
        let threshold = result
            .threshold
            .map(|t| format!(" (threshold {t:.3})"))
            .unwrap_or_default();
        view! {
            <section class="result" data-testid="result">
                <p class="score-line">
                    "Similarity "
                    <span id="score" data-testid="score" data-score=result.score.to_string()>
                        {format!("{:.3}", result.score)}
                    </span>
                    {threshold}
                </p>
                <p class=verdict_class data-testid="verdict" data-verdict=verdict_key>
                    {result.verdict.words()}
                </p>
                <ul class="explanation" data-testid="explanation">
                    {result
                        .explanation
                        .into_iter()
                        .map(|line| view! { <li>{line}</li> })
                        .collect_view()}
                </ul>
                <p class="timing" data-testid="timing">
                    {format!(
                        "Embedding time: {:.0} ms for photo 1, {:.0} ms for photo 2 (each a face \
                         and its mirror image).",
                        result.millis[0],
                        result.millis[1],
                    )}
                </p>
            </section>
        }
        .into_any()
    }
}

/// Chooses the device, the detector and the built-in model.
async fn start(page: Page) {
    page.model
        .set(ModelStatus::Loading("Looking for WebGPU…".into()));
    let (device, backend) = browser::choose_device().await;
    DEVICE.with(|slot| *slot.borrow_mut() = Some(device));
    page.backend.set(Some(backend));

    page.model
        .set(ModelStatus::Loading("Loading the face detector…".into()));
    let detector = browser::fetch_asset(DETECTOR_WEIGHTS)
        .await
        .and_then(|bytes| Detector::load(&bytes));
    match detector {
        Ok(detector) => DETECTOR.with(|slot| *slot.borrow_mut() = Some(Rc::new(detector))),
        Err(message) => page.detector_error.set(Some(format!(
            "No face detector ({message}): mark the eyes by hand."
        ))),
    }

    page.model
        .set(ModelStatus::Loading("Loading the built-in model…".into()));
    match browser::fetch_asset(BUILTIN_MODEL).await {
        Ok(bytes) => {
            if let Err(message) = install_model(page, "built-in", &bytes).await {
                page.model.set(ModelStatus::Unavailable(format!(
                    "The built-in model cannot be used: {message}"
                )));
            }
        }
        Err(message) => page.model.set(ModelStatus::Unavailable(format!(
            "No built-in model ({message}). Choose a model file written by `elasticface export`."
        ))),
    }
}

/// Loads a model file the user picked; the previous model stays when it fails.
async fn load_model_file(page: Page, file: web_sys::File) {
    page.model_error.set(None);
    let result = match browser::read_file(&file).await {
        Ok(bytes) => install_model(page, &file.name(), &bytes).await,
        Err(message) => Err(message),
    };
    if let Err(message) = result {
        page.model_error
            .set(Some(format!("{} was not loaded: {message}", file.name())));
    }
}

/// Makes `bytes` the model in use and embeds the faces already on the page with it.
async fn install_model(page: Page, name: &str, bytes: &[u8]) -> Result<(), String> {
    let Some(device) = DEVICE.with(|slot| slot.borrow().clone()) else {
        return Err("no device yet".into());
    };
    browser::yield_to_browser().await;
    let recognizer = Recognizer::load(bytes, &device)?;
    let version = match page.model.get_untracked() {
        ModelStatus::Ready(info) => info.version + 1,
        _ => 1,
    };
    page.model.set(ModelStatus::Ready(ModelInfo {
        name: name.to_string(),
        card: recognizer.card.clone(),
        version,
    }));
    RECOGNIZER.with(|slot| *slot.borrow_mut() = Some(Rc::new(recognizer)));
    for pane in page.panes {
        pane.embedding.set(None);
        embed_pane(page, pane);
    }
    Ok(())
}

/// Reads, decodes and shows a photo, then looks for faces in it.
fn load_photo(page: Page, pane: Pane, file: web_sys::File) {
    let generation = pane.generation.get_untracked() + 1;
    pane.generation.set(generation);
    pane.clear();
    pane.file_name.set(file.name());
    pane.status.set(format!("Reading {}…", file.name()));

    spawn_local(async move {
        let bytes = match browser::read_file(&file).await {
            Ok(bytes) => bytes,
            Err(message) => {
                pane.status.set(String::new());
                pane.error.set(Some(message));
                return;
            }
        };
        pane.status.set("Decoding…".into());
        browser::yield_to_browser().await;
        let decoded = pipeline::decode_photo(&bytes);
        if pane.generation.get_untracked() != generation {
            return;
        }
        let photo = match decoded {
            Ok(photo) => Arc::new(photo),
            Err(message) => {
                pane.status.set(String::new());
                pane.error
                    .set(Some(format!("{} cannot be used: {message}.", file.name())));
                return;
            }
        };
        pane.photo.set(Some(photo.clone()));

        let detector = DETECTOR.with(|slot| slot.borrow().clone());
        let faces = match &detector {
            Some(detector) => {
                pane.status.set("Looking for faces…".into());
                browser::yield_to_browser().await;
                let found = detector.detect(&photo.image).await;
                if pane.generation.get_untracked() != generation {
                    return;
                }
                found.unwrap_or_else(|message| {
                    pane.error
                        .set(Some(format!("Face detection failed: {message}")));
                    Vec::new()
                })
            }
            None => Vec::new(),
        };
        pane.faces.set(faces.clone());
        match faces.len() {
            0 => {
                pane.manual.set(true);
                let found = if detector.is_some() {
                    "No face was found. "
                } else {
                    ""
                };
                pane.status.set(format!("{found}{EYES_HINT}"));
            }
            1 => choose_face(page, pane, 0),
            count => pane
                .status
                .set(format!("{count} faces found: click the one to compare.")),
        }
    });
}

/// A click on the photo: an eye mark in manual mode, otherwise the choice of a found face.
fn click_photo(page: Page, pane: Pane, point: [f64; 2]) {
    let Some(photo) = pane.photo.get_untracked() else {
        return;
    };
    if !pane.manual.get_untracked() {
        let faces = pane.faces.get_untracked();
        let [x, y] = point.map(|v| v as f32);
        let hit = faces.iter().position(|face| {
            let [left, top, right, bottom] = face.bbox;
            (left..=right).contains(&x) && (top..=bottom).contains(&y)
        });
        if let Some(index) = hit {
            choose_face(page, pane, index);
        }
        return;
    }

    let mut eyes = pane.eyes.get_untracked();
    if eyes.len() == 2 {
        eyes.clear();
    }
    eyes.push(point);
    pane.eyes.set(eyes.clone());
    pane.error.set(None);
    if eyes.len() < 2 {
        pane.status.set("Now click the other eye.".into());
        return;
    }
    match pipeline::align_from_eyes(&photo.image, eyes[0], eyes[1]) {
        Some(crop) => {
            pane.status.set(String::new());
            set_crop(page, pane, crop);
        }
        None => pane.error.set(Some(
            "Both marks are on the same spot; click each eye once.".into(),
        )),
    }
}

/// Aligns the `index`-th found face.
fn choose_face(page: Page, pane: Pane, index: usize) {
    let Some(photo) = pane.photo.get_untracked() else {
        return;
    };
    let Some(face) = pane.faces.with_untracked(|faces| faces.get(index).cloned()) else {
        return;
    };
    pane.chosen_face.set(Some(index));
    match align::align_face(&photo.image, &face.landmarks) {
        Some(crop) => set_crop(page, pane, crop),
        None => pane.error.set(Some(
            "The face's landmarks cannot be aligned; mark the eyes instead.".into(),
        )),
    }
}

fn set_crop(page: Page, pane: Pane, image: RgbImage) {
    let data_url = pipeline::png_data_url(&image);
    pane.crop.set(Some(Arc::new(Crop { image, data_url })));
    pane.embedding.set(None);
    embed_pane(page, pane);
}

/// Computes the embedding of the pane's crop with the model in use, when both exist.
fn embed_pane(page: Page, pane: Pane) {
    let Some(crop) = pane.crop.get_untracked() else {
        return;
    };
    let Some(recognizer) = RECOGNIZER.with(|slot| slot.borrow().clone()) else {
        return;
    };
    let ModelStatus::Ready(info) = page.model.get_untracked() else {
        return;
    };
    let generation = pane.generation.get_untracked();
    pane.status.set("Computing the embedding…".into());

    spawn_local(async move {
        browser::yield_to_browser().await;
        let start = browser::now_ms();
        let result = recognizer.embed(&crop.image).await;
        let millis = browser::now_ms() - start;
        let current_crop = pane.crop.with_untracked(|c| c.as_ref().map(Arc::as_ptr));
        if pane.generation.get_untracked() != generation || current_crop != Some(Arc::as_ptr(&crop))
        {
            return;
        }
        pane.status.set(String::new());
        match result {
            Ok(values) => pane.embedding.set(Some(Arc::new(Embedding {
                values,
                millis,
                model_version: info.version,
            }))),
            Err(message) => pane.error.set(Some(message)),
        }
    });
}

fn compare(page: Page) -> Option<Comparison> {
    let ModelStatus::Ready(info) = page.model.get() else {
        return None;
    };
    let [first, second] = page.panes.map(|pane| pane.embedding.get());
    let (first, second) = (first?, second?);
    if first.model_version != info.version || second.model_version != info.version {
        return None;
    }
    let score = pipeline::cosine(&first.values, &second.values);
    Some(Comparison {
        score,
        verdict: Verdict::of(score, &info.card),
        threshold: pipeline::cosine_threshold(&info.card),
        explanation: pipeline::explain(&info.card),
        millis: [first.millis, second.millis],
    })
}

/// Mirrors what the page computed into `window.__elasticface`.
fn publish(page: Page, comparison: Option<Comparison>) {
    let backend = page.backend.get();
    let model = match page.model.get() {
        ModelStatus::Ready(info) => json!({
            "name": info.name,
            "version": info.version,
            "card": info.card,
        }),
        _ => serde_json::Value::Null,
    };
    let panes: Vec<serde_json::Value> = page
        .panes
        .iter()
        .map(|pane| {
            pane.embedding.get().map_or(serde_json::Value::Null, |e| {
                json!({
                    "embedding": e.values,
                    "millis": e.millis,
                    "model_version": e.model_version,
                })
            })
        })
        .collect();
    browser::publish(&json!({
        "backend": backend.as_ref().map(|b| b.kind),
        "backend_label": backend.map(|b| b.label),
        "model": model,
        "panes": panes,
        "score": comparison.as_ref().map(|c| c.score),
        "verdict": comparison.map(|c| c.verdict.words()),
    }));
}

fn architecture_name(card: &ModelCard) -> String {
    serde_json::to_value(card.backbone.architecture)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Paints the photo with the found faces' boxes (the chosen one in green) and the eye marks.
fn draw_photo(
    canvas: &HtmlCanvasElement,
    photo: &RgbImage,
    faces: &[DetectedFace],
    chosen: Option<usize>,
    eyes: &[[f64; 2]],
) {
    let (width, height) = photo.dimensions();
    canvas.set_width(width);
    canvas.set_height(height);
    let Some(context) = canvas
        .get_context("2d")
        .ok()
        .flatten()
        .and_then(|c| c.dyn_into::<CanvasRenderingContext2d>().ok())
    else {
        return;
    };
    let mut rgba = Vec::with_capacity(width as usize * height as usize * 4);
    for pixel in photo.pixels() {
        rgba.extend_from_slice(&[pixel[0], pixel[1], pixel[2], 255]);
    }
    if let Ok(data) =
        ImageData::new_with_u8_clamped_array_and_sh(Clamped(rgba.as_slice()), width, height)
    {
        let _ = context.put_image_data(&data, 0.0, 0.0);
    }

    let line = (f64::from(width.max(height)) / 250.0).max(2.0);
    context.set_line_width(line);
    for (index, face) in faces.iter().enumerate() {
        let [left, top, right, bottom] = face.bbox.map(f64::from);
        context.set_stroke_style_str(if Some(index) == chosen {
            "#1f9d55"
        } else {
            "#f2b705"
        });
        context.stroke_rect(left, top, right - left, bottom - top);
    }
    context.set_fill_style_str("#e5484d");
    for [x, y] in eyes {
        context.begin_path();
        let _ = context.arc(*x, *y, line * 1.5, 0.0, std::f64::consts::TAU);
        context.fill();
    }
}
