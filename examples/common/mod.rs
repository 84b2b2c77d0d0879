// SPDX-License-Identifier: MPL-2.0
//! What the record and export examples share: start-up, error reporting and the bus loop.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use gst::prelude::*;

/// Runs the program, printing its error as `NAME: error: …` with exit status 1.
pub fn main(name: &str, run: impl FnOnce() -> Result<(), String>) -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// GStreamer, with the plugin registered statically (no GST_PLUGIN_PATH needed).
pub fn init() -> Result<(), String> {
    gst::init().map_err(|e| format!("GStreamer failed to initialise: {e}"))?;
    gstracs::plugin_register_static().map_err(|e| format!("cannot register the plugin: {e}"))
}

/// How a pipeline ended: `Ok` at EOS with the last warning posted, if any; the error's text.
pub type Outcome = Result<Option<String>, String>;

/// Plays `pipeline` until EOS or an error, printing warnings as `NAME: warning: …`, calling
/// `every_second` once a second and `every_wake` every 100 ms (for example to send EOS when
/// asked). Leaves the pipeline playing: the caller reads what it needs, then sets it to NULL.
pub fn play(
    pipeline: &gst::Pipeline,
    name: &str,
    mut every_second: impl FnMut(Instant),
    mut every_wake: impl FnMut(),
) -> Outcome {
    if pipeline.set_state(gst::State::Playing).is_err() {
        return Err(first_error(pipeline).unwrap_or_else(|| "the pipeline did not start".into()));
    }
    let bus = pipeline.bus().expect("a pipeline has a bus");
    let started = Instant::now();
    let mut next_report = started + Duration::from_secs(1);
    let mut last_warning = None;
    loop {
        every_wake();
        if Instant::now() >= next_report {
            every_second(started);
            next_report += Duration::from_secs(1);
        }
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(100)) else {
            continue;
        };
        match msg.view() {
            gst::MessageView::Eos(_) => return Ok(last_warning),
            gst::MessageView::Error(e) => return Err(e.error().to_string()),
            gst::MessageView::Warning(w) => {
                eprintln!("{name}: warning: {}", w.error());
                last_warning = Some(w.error().to_string());
            }
            _ => {}
        }
    }
}

/// The first error on the bus within a second (after a state change failed).
fn first_error(pipeline: &gst::Pipeline) -> Option<String> {
    let msg = pipeline
        .bus()?
        .timed_pop_filtered(gst::ClockTime::from_seconds(1), &[gst::MessageType::Error])?;
    match msg.view() {
        gst::MessageView::Error(e) => Some(e.error().to_string()),
        _ => None,
    }
}
