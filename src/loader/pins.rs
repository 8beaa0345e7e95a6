//! The pin dir: where pinned maps and links live, who may use it, and how
//! everything in it is removed.
//!
//! Why this exists: pins are how enforcement outlives the process that
//! loaded it and how a new loader adopts it. One loader at a time may own a
//! pin dir (an exclusive `flock`), because two would detach each other's
//! hooks and write the same inactive slot.

use std::path::{Path, PathBuf};

use super::hooks::detach_links;
use super::{LoaderError, abi, sys};

/// Where pins live unless told otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/agent-assembly";

/// The pin layout of one pin dir: `<root>/v<ABI>/{maps,links}/aa-policyd-NAME`.
/// Every pin's name starts with `abi::PIN_PREFIX`, so the syscall guard can
/// tell an unlink or rename of a pin by its last path component.
#[derive(Clone, Debug)]
pub struct PinLayout {
    pub(super) root: PathBuf,
}

impl PinLayout {
    pub fn new(pin_dir: &Path) -> Self {
        PinLayout {
            root: pin_dir.to_owned(),
        }
    }

    pub(super) fn versioned(&self) -> PathBuf {
        self.root.join(format!("v{}", abi::ABI_VERSION))
    }

    pub(super) fn maps(&self) -> PathBuf {
        self.versioned().join("maps")
    }

    pub(super) fn links(&self) -> PathBuf {
        self.versioned().join("links")
    }

    /// The pin of the link of `program`.
    pub fn link(&self, program: &str) -> PathBuf {
        self.links().join(format!("{}{program}", abi::PIN_PREFIX))
    }

    /// The pin of map `name`.
    pub fn map(&self, name: &str) -> PathBuf {
        self.maps().join(format!("{}{name}", abi::PIN_PREFIX))
    }
}

/// Takes the pin dir's exclusive lock, or says it is in use.
///
/// Retries for a moment first: a child forked by any thread of a process
/// that held the lock keeps a copy of its file description until it execs,
/// which can outlive the holder by a few milliseconds. A real second loader
/// holds it for its whole life.
pub(super) fn lock_pin_dir(pin_dir: &Path) -> Result<std::fs::File, LoaderError> {
    const PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);
    let dir = std::fs::File::open(pin_dir)
        .map_err(|e| LoaderError::io(format!("opening pin dir {}", pin_dir.display()), e))?;
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        match sys::try_lock_exclusive(&dir) {
            Ok(true) => return Ok(dir),
            Ok(false) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Ok(false) => {
                return Err(LoaderError::Busy {
                    pin_dir: pin_dir.to_owned(),
                });
            }
            Err(e) => {
                return Err(LoaderError::io(
                    format!("locking pin dir {}", pin_dir.display()),
                    e,
                ));
            }
        }
    }
}

/// Removes every program, link, map and pin under `pin_dir` that this tool
/// created. Loads nothing, so it works even when the probes cannot load.
pub fn unload(pin_dir: &Path) -> Result<(), LoaderError> {
    let pins = PinLayout::new(pin_dir);
    // A loader still running on the pin dir would keep using what we remove.
    let _lock = match lock_pin_dir(pin_dir) {
        Err(LoaderError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(());
        }
        other => other?,
    };
    detach_links(&pins)?;
    for dir in [pins.links(), pins.maps()] {
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| LoaderError::io(format!("removing pins in {}", dir.display()), e))?;
        }
    }
    for dir in [pins.versioned(), pins.root.clone()] {
        match std::fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {}
            Err(e) => return Err(LoaderError::io(format!("removing {}", dir.display()), e)),
        }
    }
    Ok(())
}

/// Makes sure `pin_dir` is on a bpf filesystem, mounting one at
/// /sys/fs/bpf when a fresh machine has none (as systemd does at boot).
pub(super) fn ensure_bpffs(pin_dir: &Path) -> Result<(), LoaderError> {
    let default_mount = Path::new("/sys/fs/bpf");
    if pin_dir.starts_with(default_mount) {
        let mounted =
            sys::is_bpffs(default_mount).map_err(|e| LoaderError::io("statfs /sys/fs/bpf", e))?;
        if !mounted {
            sys::mount_bpffs(default_mount)
                .map_err(|e| LoaderError::io("mounting bpffs on /sys/fs/bpf", e))?;
            tracing::warn!("bpffs was not mounted; mounted it on /sys/fs/bpf");
        }
        return Ok(());
    }
    let probe = pin_dir.ancestors().find(|p| p.exists()).unwrap_or(pin_dir);
    if !sys::is_bpffs(probe)
        .map_err(|e| LoaderError::io(format!("statfs {}", probe.display()), e))?
    {
        return Err(LoaderError::io(
            format!("pin dir {}", pin_dir.display()),
            std::io::Error::other("is not on a bpf filesystem (mount -t bpf bpf DIR)"),
        ));
    }
    Ok(())
}
