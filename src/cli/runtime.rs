//! Driving an engine future from a command: a small tokio runtime, the terminal display, and
//! interruption: Ctrl-C, or SIGTERM / SIGHUP (a CI job cancelled, a terminal closed), cancels
//! the run cleanly (the iteration in flight is recorded as cancelled, its processes killed); a
//! second signal quits at once.

use std::future::Future;
use std::sync::Arc;

use wiggum_engine::run::Cancel;

use super::display::Display;
use super::{CliError, EXIT_INTERRUPTED};

/// Runs `f` to completion with a display (quiet: results only) and a cancel flag wired to
/// Ctrl-C, SIGTERM and SIGHUP; returns what it returned.
pub fn drive<T, F, Fut>(quiet: bool, f: F) -> Result<T, CliError>
where
    F: FnOnce(Arc<Display>, Cancel) -> Fut,
    Fut: Future<Output = T>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format!("cannot start the runtime: {e}")))?;
    let display = Arc::new(Display::new(quiet));
    let cancel = Cancel::new();
    let result = runtime.block_on(async {
        let watcher = cancel.clone();
        tokio::spawn(async move {
            let Some(name) = interrupted().await else {
                return;
            };
            eprintln!(
                "\ninterrupted ({name}): recording the iterations in flight as cancelled \
                 (Ctrl-C again to quit at once)"
            );
            watcher.cancel();
            if interrupted().await.is_some() {
                std::process::exit(EXIT_INTERRUPTED);
            }
        });
        f(display.clone(), cancel.clone()).await
    });
    display.finish();
    Ok(result)
}

/// Waits for Ctrl-C, SIGTERM or SIGHUP and names it; `None` when no signal can be watched.
async fn interrupted() -> Option<&'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            return tokio::signal::ctrl_c().await.ok().map(|()| "Ctrl-C");
        };
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.ok().map(|()| "Ctrl-C"),
            _ = term.recv() => Some("SIGTERM"),
            _ = hup.recv() => Some("SIGHUP"),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.ok().map(|()| "Ctrl-C")
    }
}
