//! The tracing subscriber of a Ravel process: `text` (default) or `json`
//! lines on stderr, filtered by `RAVEL_LOG` (an `EnvFilter` directive such
//! as `info,openraft=warn`) or the process's default, with openraft's
//! per-request warnings and errors limited to one line per 10 s each.

use serde::Deserialize;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Installs the global subscriber; a second call is a no-op.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RAVEL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    // try_init also routes the `log` crate's records (dependencies that use
    // it) into tracing.
    let _ = tracing_subscriber::util::SubscriberInitExt::try_init(subscriber(
        format,
        filter,
        std::io::stderr,
    ));
}

/// The subscriber [`init`] installs, writing to `writer`.
fn subscriber<W>(
    format: LogFormat,
    filter: tracing_subscriber::EnvFilter,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::Layer;
    let limit = RepeatLimit::new(REPEAT_WINDOW);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => Box::new(
            registry.with(
                tracing_subscriber::fmt::layer()
                    .with_writer(writer)
                    .with_target(false)
                    .with_filter(limit),
            ),
        ),
        LogFormat::Json => Box::new(
            registry.with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_writer(writer)
                    .with_filter(limit),
            ),
        ),
    }
}

/// How often one openraft warning or error line may repeat.
const REPEAT_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

/// Lets through at most one warning or error per `window` from each line
/// of openraft's code. openraft logs some conditions once per request: with
/// one follower down, "timeout while confirming leadership for read
/// request" for every linearizable read, thousands of lines a second that
/// bury everything else. Ravel's own lines, and openraft's below warning,
/// are not limited.
struct RepeatLimit {
    window: std::time::Duration,
    last: std::sync::Mutex<
        std::collections::HashMap<tracing::callsite::Identifier, std::time::Instant>,
    >,
}

impl RepeatLimit {
    fn new(window: std::time::Duration) -> Self {
        Self {
            window,
            last: Default::default(),
        }
    }
}

impl<S> tracing_subscriber::layer::Filter<S> for RepeatLimit {
    fn enabled(
        &self,
        meta: &tracing::Metadata<'_>,
        _: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        // More verbose levels compare greater: INFO > WARN > ERROR.
        if !meta.is_event()
            || *meta.level() > tracing::Level::WARN
            || !meta.target().starts_with("openraft")
        {
            return true;
        }
        let now = std::time::Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match last.get(&meta.callsite()) {
            Some(at) if now.duration_since(*at) < self.window => false,
            _ => {
                last.insert(meta.callsite(), now);
                true
            }
        }
    }

    fn callsite_enabled(
        &self,
        _: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        // Decided per event, not once per callsite.
        tracing::subscriber::Interest::sometimes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> tracing_subscriber::fmt::MakeWriter<'w> for Captured {
        type Writer = Captured;
        fn make_writer(&'w self) -> Captured {
            self.clone()
        }
    }

    #[test]
    fn an_openraft_error_repeated_per_request_is_logged_once_per_window() {
        for format in [LogFormat::Text, LogFormat::Json] {
            let out = Captured::default();
            let sub = subscriber(
                format,
                tracing_subscriber::EnvFilter::new("info"),
                out.clone(),
            );
            tracing::subscriber::with_default(sub, || {
                for i in 0..100 {
                    tracing::error!(target: "openraft::core::raft_core", i, "timeout while confirming leadership for read request");
                    tracing::info!(target: "openraft::core::raft_core", i, "routine");
                    tracing::error!(target: "ravel_node::service", i, "ours");
                }
            });
            let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
            let count = |needle: &str| text.lines().filter(|l| l.contains(needle)).count();
            assert_eq!(count("confirming leadership"), 1, "{format:?}: {text}");
            assert_eq!(count("routine"), 100, "{format:?}: info is not limited");
            assert_eq!(
                count("ours"),
                100,
                "{format:?}: Ravel's own lines are not limited"
            );
        }
    }
}
