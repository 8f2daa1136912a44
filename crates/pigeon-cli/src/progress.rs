//! Progress bars for long work (indicatif): drawn on standard error when it is a terminal,
//! without colour, and not at all otherwise (or with `--json`), so pipes and scripts see only
//! the command's output.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar for `what`, hidden when `quiet` or when standard error is not a terminal.
pub(crate) fn bar(what: &str, quiet: bool) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        None,
        if quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        },
    );
    if let Ok(style) = ProgressStyle::with_template("{msg}: [{bar:30}] {pos}/{len} ({elapsed})") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    bar
}

/// Shows `done` of `total`.
pub(crate) fn set(bar: &ProgressBar, done: usize, total: usize) {
    bar.set_length(u64::try_from(total).unwrap_or(u64::MAX));
    bar.set_position(u64::try_from(done).unwrap_or(u64::MAX));
}

/// A bar counting bytes for `what` (a file going up or coming down), hidden as [`bar`] is.
pub(crate) fn bytes_bar(what: &str, quiet: bool) -> ProgressBar {
    let bar = bar(what, quiet);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg}: [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} (eta {eta})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}
