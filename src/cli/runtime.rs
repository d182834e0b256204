//! Driving an engine future from a command: a small tokio runtime, the terminal display, and
//! interruption: Ctrl-C, or SIGTERM / SIGHUP (a CI job cancelled, a terminal closed), cancels
//! the run cleanly (the iteration in flight is recorded as cancelled, its processes killed); a
//! second signal quits at once.

use std::future::Future;
use std::sync::Arc;

use wiggum_engine::run::Cancel;

use wiggum_engine::events::{Event, EventSink};

use super::ci::{CiArgs, CiSink};
use super::display::Display;
use super::{CliError, EXIT_INTERRUPTED};

/// Where a command's progress goes: the terminal display, or CI log lines (`--ci`).
pub enum Output {
    Terminal(Display),
    Ci(CiSink),
}

impl Output {
    /// CI lines when CI mode is on (`--ci` or CI=true), else the terminal display.
    pub fn new(quiet: bool, ci: &CiArgs) -> Arc<Output> {
        Arc::new(if ci.enabled() {
            Output::Ci(CiSink::new(quiet))
        } else {
            Output::Terminal(Display::new(quiet))
        })
    }

    /// The CI sink, in CI mode.
    pub fn ci(&self) -> Option<&CiSink> {
        match self {
            Output::Ci(c) => Some(c),
            Output::Terminal(_) => None,
        }
    }

    fn finish(&self) {
        if let Output::Terminal(d) = self {
            d.finish();
        }
    }
}

impl EventSink for Output {
    fn emit(&self, event: &Event) {
        match self {
            Output::Terminal(d) => d.emit(event),
            Output::Ci(c) => c.emit(event),
        }
    }
}

/// Runs `f` to completion with `display` (see [`Output`]) and a cancel flag wired to
/// Ctrl-C, SIGTERM and SIGHUP; returns what it returned.
pub fn drive<T, F, Fut>(display: Arc<Output>, f: F) -> Result<T, CliError>
where
    F: FnOnce(Arc<Output>, Cancel) -> Fut,
    Fut: Future<Output = T>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format!("cannot start the runtime: {e}")))?;
    let cancel = Cancel::new();
    let result = runtime.block_on(async {
        // Listening from here on, before the run starts: a signal in the first milliseconds
        // must cancel the run too, not kill the process half-way through recording it.
        let mut signals = Signals::new();
        let watcher = cancel.clone();
        tokio::spawn(async move {
            let Some(name) = signals.next().await else {
                return;
            };
            eprintln!(
                "\ninterrupted ({name}): recording the iterations in flight as cancelled \
                 (Ctrl-C again to quit at once)"
            );
            watcher.cancel();
            if signals.next().await.is_some() {
                std::process::exit(EXIT_INTERRUPTED);
            }
        });
        f(display.clone(), cancel.clone()).await
    });
    display.finish();
    Ok(result)
}

/// Ctrl-C (SIGINT), SIGTERM and SIGHUP, listened to from its creation on.
struct Signals {
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Must be called within the runtime.
    fn new() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Signals {
                int: signal(SignalKind::interrupt()).ok(),
                term: signal(SignalKind::terminate()).ok(),
                hup: signal(SignalKind::hangup()).ok(),
            }
        }
        #[cfg(not(unix))]
        {
            Signals {}
        }
    }

    /// The next signal's name; `None` when no signal can be watched.
    async fn next(&mut self) -> Option<&'static str> {
        #[cfg(unix)]
        {
            if self.int.is_none() && self.term.is_none() && self.hup.is_none() {
                return None;
            }
            tokio::select! {
                Some(()) = recv(&mut self.int) => Some("Ctrl-C"),
                Some(()) = recv(&mut self.term) => Some("SIGTERM"),
                Some(()) = recv(&mut self.hup) => Some("SIGHUP"),
                else => None,
            }
        }
        #[cfg(not(unix))]
        {
            tokio::signal::ctrl_c().await.ok().map(|()| "Ctrl-C")
        }
    }
}

#[cfg(unix)]
async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match signal {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}
