//! Watching the pin dir: turns "something removed or renamed a pin" into a
//! repair request for the reconcile loop.
//!
//! Why this exists: pins are how enforcement outlives the daemon and how the
//! next daemon adopts it. A root process (a confined one among them) can
//! `rm` a pin; while the daemon runs that detaches nothing (it holds every
//! link and map), but a restart would then load a second set of programs
//! beside the old ones. So the daemon puts pins back at once: inotify on the
//! pin dir for speed, and a one-second tick as the safety net (a removed
//! directory takes its watch with it; the tick re-establishes it).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use notify::event::{EventKind, ModifyKind, RemoveKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};

/// How often pins are checked when inotify says nothing.
const TICK: Duration = Duration::from_secs(1);

/// Stops the pin watcher when dropped.
pub struct PinWatchHandle {
    stop: Arc<AtomicBool>,
}

impl Drop for PinWatchHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Calls `on_change` from a background thread whenever an entry under
/// `pin_dir` is removed, renamed or created, and once every `TICK`.
pub fn spawn(
    pin_dir: &Path,
    on_change: impl Fn() + Send + 'static,
) -> std::io::Result<PinWatchHandle> {
    let stop = Arc::new(AtomicBool::new(false));
    let thread_stop = Arc::clone(&stop);
    let pin_dir: PathBuf = pin_dir.to_owned();
    std::thread::Builder::new()
        .name("pin-watch".into())
        .spawn(move || watch_loop(&pin_dir, &thread_stop, &on_change))?;
    Ok(PinWatchHandle { stop })
}

fn is_tampering(event: &notify::Event) -> bool {
    matches!(
        event.kind,
        EventKind::Remove(_) | EventKind::Create(_) | EventKind::Modify(ModifyKind::Name(_))
    )
}

fn watch_loop(pin_dir: &Path, stop: &AtomicBool, on_change: &dyn Fn()) {
    let (sender, events) = mpsc::channel();
    let mut watcher: Option<RecommendedWatcher> = None;
    while !stop.load(Ordering::Relaxed) {
        if watcher.is_none() {
            let sender = sender.clone();
            watcher = notify::recommended_watcher(move |event| {
                let _ = sender.send(event);
            })
            .and_then(|mut w| w.watch(pin_dir, RecursiveMode::Recursive).map(|()| w))
            .ok();
        }
        match events.recv_timeout(TICK) {
            Ok(Ok(event)) if is_tampering(&event) => {
                // A removed or renamed directory takes its watch with it.
                if matches!(
                    event.kind,
                    EventKind::Remove(RemoveKind::Folder) | EventKind::Modify(ModifyKind::Name(_))
                ) {
                    watcher = None;
                }
                on_change();
            }
            Ok(Ok(_)) => {}
            Ok(Err(_)) => watcher = None,
            Err(mpsc::RecvTimeoutError::Timeout) => on_change(),
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}
