//! Progress bars (indicatif) for the store's long operations, on stderr. Hidden when
//! stderr is not a terminal, so scripts and `--json` get clean output.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Bars {
    bar: Option<ProgressBar>,
    show: bool,
}

impl Bars {
    pub fn new() -> Bars {
        Bars {
            bar: None,
            show: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        }
    }
}

impl thaw::store::Progress for Bars {
    fn start(&mut self, what: &str, total_bytes: u64) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        let target = if self.show {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(total_bytes), target);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:>24} [{bar:32}] {binary_bytes:>10}/{binary_total_bytes} {binary_bytes_per_sec} {eta}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar.set_message(what.to_owned());
        self.bar = Some(bar);
    }

    fn advance(&mut self, bytes: u64) {
        if let Some(b) = &self.bar {
            b.inc(bytes);
        }
    }

    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}
