// SPDX-License-Identifier: MPL-2.0
fn main() {
    gst_plugin_version_helper::info();
    // The plugin's origin URL (gst-inspect-1.0's "Origin URL"): Cargo.toml's `repository` once
    // the project is published there, else what GStreamer itself says of an unknown origin.
    let repository = std::env::var("CARGO_PKG_REPOSITORY").unwrap_or_default();
    let origin = if repository.is_empty() {
        "Unknown package origin".to_string()
    } else {
        repository
    };
    println!("cargo:rustc-env=RACS_PLUGIN_ORIGIN={origin}");
}
