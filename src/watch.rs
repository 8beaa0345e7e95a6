//! Watching the policy file: turns file-system events into "the policy may
//! have changed" triggers.
//!
//! Why it watches the parent directory: a watch on the file itself dies on
//! the first rename-based save (vim, sed -i, mv, install, dpkg, the
//! Kubernetes `..data` swap). Measured with notify 8 on 6.18, every editor's
//! save ends in one of: close-after-write, a rename onto the name, a create,
//! or a remove — those are acted on, for the policy's name or `..data`.
//! Opens, reads (including the daemon's own), plain modifications (a write
//! still in progress) and metadata changes (chmod, touch) are not.
//!
//! A burst of events is coalesced: the trigger fires once the directory has
//! been quiet for `QUIET`, so the last save of a burst is what is read. A
//! directory that is removed (or moved away) and recreated is watched again:
//! the event for the directory itself drops the dead watch, and its identity
//! (device, inode) is re-checked every tick as a second line — not the only
//! one, because ext4 hands a freed inode number straight to the next mkdir. An inotify
//! overflow (notify's Rescan flag) forces a reload. A slow periodic check is
//! the safety net for anything else.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};

use crate::reconcile::Trigger;

/// How long the directory must be quiet before a burst becomes a trigger.
const QUIET: Duration = Duration::from_millis(25);
/// A trigger fires at the latest this long after the first event of a burst.
const MAX_DELAY: Duration = Duration::from_millis(250);
/// How often the directory's identity is re-checked.
const TICK: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("the policy path {0} has no file name")]
    NoFileName(PathBuf),
    #[error("cannot start the watcher thread: {0}")]
    Thread(std::io::Error),
}

/// Stops the watcher when dropped.
pub struct WatchHandle {
    stop: Arc<AtomicBool>,
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Watches `policy_path` and calls `on_trigger` from a background thread.
pub fn spawn(
    policy_path: &Path,
    periodic: Duration,
    on_trigger: impl Fn(Trigger) + Send + 'static,
) -> Result<WatchHandle, WatchError> {
    let name = policy_path
        .file_name()
        .ok_or_else(|| WatchError::NoFileName(policy_path.to_owned()))?
        .to_owned();
    let dir = match policy_path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let thread_stop = Arc::clone(&stop);
    // The first watch exists before `spawn` returns, so a save made right
    // after the daemon says READY is never missed.
    let (sender, events) = mpsc::channel();
    let watch = establish(&dir, &sender);
    if watch.is_none() {
        tracing::warn!("{} does not exist yet; watching for it", dir.display());
    }
    let channel = (sender, events);
    std::thread::Builder::new()
        .name("policy-watch".into())
        .spawn(move || {
            watch_loop(
                &dir,
                &name,
                periodic,
                &thread_stop,
                &on_trigger,
                channel,
                watch,
            )
        })
        .map_err(WatchError::Thread)?;
    Ok(WatchHandle { stop })
}

/// The (device, inode) of a directory, or `None` if it is gone.
fn identity(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir)
        .ok()
        .filter(|m| m.is_dir())
        .map(|m| (m.dev(), m.ino()))
}

type EventChannel = (
    mpsc::Sender<notify::Result<notify::Event>>,
    mpsc::Receiver<notify::Result<notify::Event>>,
);

struct Watch {
    _watcher: RecommendedWatcher,
    identity: (u64, u64),
}

fn establish(dir: &Path, sender: &mpsc::Sender<notify::Result<notify::Event>>) -> Option<Watch> {
    let identity = identity(dir)?;
    let sender = sender.clone();
    let mut watcher = notify::recommended_watcher(move |event| {
        let _ = sender.send(event);
    })
    .map_err(|e| tracing::error!("cannot create a file watcher: {e}"))
    .ok()?;
    match watcher.watch(dir, RecursiveMode::NonRecursive) {
        Ok(()) => Some(Watch {
            _watcher: watcher,
            identity,
        }),
        Err(error) => {
            tracing::warn!("cannot watch {}: {error}; retrying", dir.display());
            None
        }
    }
}

/// Whether an event can mean a new policy is in place.
fn relevant(event: &notify::Event, name: &std::ffi::OsStr) -> bool {
    let kind_matters = matches!(
        event.kind,
        EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Modify(ModifyKind::Name(_))
            | EventKind::Create(_)
            | EventKind::Remove(_)
    );
    kind_matters
        && event
            .paths
            .iter()
            .any(|path| path.file_name().is_some_and(|f| f == name || f == "..data"))
}

/// Whether `event` says the watched directory itself was removed or moved.
fn directory_itself_gone(event: &notify::Event, dir: &Path) -> bool {
    matches!(
        event.kind,
        EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
    ) && event.paths.iter().any(|path| path == dir)
}

fn watch_loop(
    dir: &Path,
    name: &std::ffi::OsStr,
    periodic: Duration,
    stop: &AtomicBool,
    on_trigger: &dyn Fn(Trigger),
    (sender, events): EventChannel,
    mut watch: Option<Watch>,
) {
    let mut pending: Option<(Trigger, Instant, Instant)> = None; // (trigger, first, last)
    let mut last_tick = Instant::now();
    let mut last_periodic = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        // Wake exactly when a pending burst would be due, else every tick.
        let wait = pending.map_or(TICK, |(_, first, last)| {
            let due = (last + QUIET).min(first + MAX_DELAY);
            due.saturating_duration_since(Instant::now()).min(TICK)
        });
        match events.recv_timeout(wait) {
            Ok(Ok(event)) => {
                if directory_itself_gone(&event, dir) {
                    // The inotify watch died with the directory; a new one
                    // is set up on the next tick, whatever the new inode is.
                    watch = None;
                }
                let trigger = if event.need_rescan() {
                    Some(Trigger::Rescan)
                } else if relevant(&event, name) {
                    Some(Trigger::FileChange)
                } else {
                    None
                };
                if let Some(trigger) = trigger {
                    let now = Instant::now();
                    pending = Some(match pending {
                        // A rescan in a burst wins: it forces the reload.
                        Some((Trigger::Rescan, first, _)) => (Trigger::Rescan, first, now),
                        Some((_, first, _)) => (trigger, first, now),
                        None => (trigger, now, now),
                    });
                }
            }
            Ok(Err(error)) => {
                tracing::warn!("file watcher error: {error}; reloading to be safe");
                pending = Some((Trigger::Rescan, Instant::now(), Instant::now()));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {}
        }
        let now = Instant::now();
        if let Some((trigger, first, last)) = pending
            && (now.duration_since(last) >= QUIET || now.duration_since(first) >= MAX_DELAY)
        {
            pending = None;
            on_trigger(trigger);
        }
        if now.duration_since(last_tick) >= TICK || watch.is_none() {
            last_tick = now;
            let current = identity(dir);
            if watch.as_ref().map(|w| w.identity) != current
                || (watch.is_none() && current.is_some())
            {
                watch = current.and_then(|_| establish(dir, &sender));
                if watch.is_some() {
                    tracing::info!("watching {} again", dir.display());
                    on_trigger(Trigger::FileChange);
                }
            }
        }
        if now.duration_since(last_periodic) >= periodic {
            last_periodic = now;
            on_trigger(Trigger::Periodic);
        }
    }
}
