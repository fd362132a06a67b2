//! Rendering a rebuild's progress reports: an indicatif bar on a terminal; otherwise (CI logs)
//! one line per quarter of the way, so a log gets a handful of lines, not a redraw per batch.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{HumanDuration, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A rebuild's progress, drawn or logged.
pub(crate) struct Bar {
    label: &'static str,
    /// The bar, drawn on stdout; `None` when stdout is not a terminal.
    drawn: Option<ProgressBar>,
    /// Quarters of the way already logged (without a terminal).
    logged: AtomicU64,
}

impl Bar {
    /// A bar labelled `label`, drawn on stdout if it is a terminal.
    pub(crate) fn new(label: &'static str) -> anyhow::Result<Self> {
        let drawn = if std::io::stdout().is_terminal() {
            let style =
                ProgressStyle::with_template("{prefix} [{wide_bar}] {pos}/{len} events, {msg}")?
                    .progress_chars("=> ");
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stdout())
                .with_style(style)
                .with_prefix(label);
            Some(bar)
        } else {
            None
        };
        Ok(Self {
            label,
            drawn,
            logged: AtomicU64::new(0),
        })
    }

    /// Shows `processed` of `total` events at `rate` events per second, `eta` left.
    pub(crate) fn update(&self, processed: u64, total: u64, rate: f64, eta: Option<Duration>) {
        let eta = eta.map_or_else(|| "?".to_owned(), |eta| HumanDuration(eta).to_string());
        let rate = format!("{rate:.0} events/s, eta {eta}");
        if let Some(bar) = &self.drawn {
            bar.set_length(total);
            bar.set_position(processed);
            bar.set_message(rate);
            return;
        }
        let quarter = processed
            .saturating_mul(4)
            .checked_div(total)
            .map_or(4, |quarter| quarter.min(4));
        if quarter > self.logged.fetch_max(quarter, Ordering::Relaxed) {
            println!("{}: {processed}/{total} events, {rate}", self.label);
        }
    }

    /// Leaves the bar drawn at its last state.
    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.drawn {
            bar.finish();
        }
    }
}
