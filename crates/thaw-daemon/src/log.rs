//! Logging for thawd and the `thaw` CLI: `THAW_LOG` filters (e.g. `thaw=debug`),
//! `THAW_LOG_FORMAT` chooses `text` (the default) or `json` (one JSON object a line,
//! with the request's span and its id, for log collectors). Logs go to stderr.

/// `THAW_LOG_FORMAT` is neither `text` nor `json`.
#[derive(Debug, thiserror::Error)]
#[error("THAW_LOG_FORMAT={0:?} is not text or json")]
pub struct LogFormatError(String);

/// Installs the global subscriber; `default` is the filter when `THAW_LOG` is unset.
///
/// # Errors
/// `THAW_LOG_FORMAT` has another value (nothing is installed then).
pub fn init(default: &str) -> Result<(), LogFormatError> {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("THAW_LOG").unwrap_or_else(|_| default.into());
    let format = std::env::var("THAW_LOG_FORMAT").unwrap_or_default();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format.as_str() {
        "" | "text" => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        "json" => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
        _ => return Err(LogFormatError(format)),
    }
    Ok(())
}
