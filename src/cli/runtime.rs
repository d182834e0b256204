//! Driving an engine future from a command: a small tokio runtime, the terminal display, and
//! Ctrl-C (the first cancels the run cleanly, a second quits at once).

use std::future::Future;
use std::sync::Arc;

use wiggum_engine::run::Cancel;

use super::display::Display;
use super::{CliError, EXIT_INTERRUPTED};

/// Runs `f` to completion with a display (quiet: results only) and a cancel flag wired to
/// Ctrl-C; returns what it returned.
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
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!(
                    "\ninterrupted: recording the iterations in flight as cancelled \
                     (Ctrl-C again to quit at once)"
                );
                watcher.cancel();
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(EXIT_INTERRUPTED);
                }
            }
        });
        f(display.clone(), cancel.clone()).await
    });
    display.finish();
    Ok(result)
}
