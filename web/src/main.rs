//! Entry point of the page: Trunk builds this binary for `wasm32-unknown-unknown` and loads it
//! from `index.html`. On other targets it only says where to look.

#[cfg(target_arch = "wasm32")]
fn main() {
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(elasticface_web::App);
}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    eprintln!("elasticface-web is a browser app: build it with scripts/web-build.sh");
    std::process::exit(2);
}
