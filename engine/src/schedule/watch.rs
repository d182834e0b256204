//! [`watch`]: tells the daemon when a `*.toml` file in one of its directories changes, with
//! inotify on a thread of its own that blocks in `read` (no polling). Elsewhere than Linux
//! it does nothing: SIGHUP still reloads.

use std::path::PathBuf;

use tokio::sync::mpsc;

/// Starts watching `dirs`; every change of a `*.toml` file sends `()` (bursts are coalesced
/// by the receiver).
pub fn watch(dirs: &[PathBuf]) -> mpsc::UnboundedReceiver<()> {
    let (tx, rx) = mpsc::unbounded_channel();
    #[cfg(target_os = "linux")]
    start(dirs, tx);
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (dirs, tx);
    }
    rx
}

#[cfg(target_os = "linux")]
fn start(dirs: &[PathBuf], tx: mpsc::UnboundedSender<()>) {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: plain syscalls on a descriptor this function owns; buffers are local.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    if fd < 0 {
        tracing::warn!("inotify unavailable; patrol files are re-read on SIGHUP only");
        return;
    }
    let mask = libc::IN_CLOSE_WRITE
        | libc::IN_MOVED_TO
        | libc::IN_MOVED_FROM
        | libc::IN_DELETE
        | libc::IN_CREATE;
    for dir in dirs {
        let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
            continue;
        };
        // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
        unsafe { libc::inotify_add_watch(fd, c.as_ptr(), mask) };
    }
    let spawned = std::thread::Builder::new()
        .name("wiggum-watch".into())
        .spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                // SAFETY: reads into a local buffer of the given length.
                let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
                if n <= 0 {
                    if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                        continue;
                    }
                    break;
                }
                let mut i = 0usize;
                let mut relevant = false;
                let header = std::mem::size_of::<libc::inotify_event>();
                while i + header <= n as usize {
                    // SAFETY: the kernel wrote whole events; read_unaligned copes with the
                    // buffer's alignment.
                    let ev: libc::inotify_event =
                        unsafe { std::ptr::read_unaligned(buf[i..].as_ptr().cast()) };
                    let name = &buf[i + header..i + header + ev.len as usize];
                    let name = name.split(|b| *b == 0).next().unwrap_or_default();
                    if name.ends_with(b".toml") {
                        relevant = true;
                    }
                    i += header + ev.len as usize;
                }
                if relevant && tx.send(()).is_err() {
                    break;
                }
            }
            // SAFETY: closes the descriptor this thread owns.
            unsafe { libc::close(fd) };
        });
    if spawned.is_err() {
        // SAFETY: the thread did not start; the descriptor is still ours.
        unsafe { libc::close(fd) };
    }
}
