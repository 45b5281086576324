//! Terminal progress bars for engine operations.

use indicatif::{ProgressBar, ProgressStyle};

use crate::progress::Progress;

/// An indicatif bar behind the engine's [`Progress`] trait (hidden when stderr is not a tty).
pub struct Bar(ProgressBar);

impl Bar {
    /// A new, not yet started bar.
    pub fn new() -> Self {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} ETA {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Self(bar)
    }
    /// A `(done, total)` callback for the data loaders.
    pub fn callback(&self) -> impl Fn(usize, usize) + Sync + '_ {
        move |done, total| {
            self.0.set_length(total as u64);
            self.0.set_position(done as u64);
        }
    }
}

impl Default for Bar {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress for Bar {
    fn start(&self, phase: &str, total: u64) {
        self.0.reset();
        self.0.set_prefix(phase.to_string());
        self.0.set_length(total);
    }
    fn update(&self, done: u64, message: &str) {
        self.0.set_position(done);
        self.0.set_message(message.to_string());
    }
    fn finish(&self, message: &str) {
        self.0.finish_with_message(message.to_string());
    }
}

/// Loads a dataset spec with a terminal bar while it is preprocessed or generated.
pub fn load_data(
    spec: &str,
    on_bad_image: crate::data::OnBadImage,
) -> anyhow::Result<crate::data::Dataset> {
    let bar = Bar::new();
    let cb = bar.callback();
    let ds = crate::zoo::load_data_with_progress(spec, on_bad_image, &cb)?;
    bar.0.finish_and_clear();
    Ok(ds)
}
