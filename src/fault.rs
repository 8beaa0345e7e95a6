//! Fault points for the crash-consistency tests: a debug build kills itself
//! (SIGKILL, as `kill -9` would) when it reaches the point named by
//! `AA_POLICYD_FAULT` (`name` or `name:N` for its Nth visit).
//!
//! Why this exists: a `kill -9` at a random moment rarely lands inside the
//! few milliseconds of an apply or a confine; the tests need every
//! interesting instant, deterministically. Release builds (the package)
//! compile every point to nothing.

/// Kills this process if `name` is the fault point asked for.
#[cfg(debug_assertions)]
pub fn point(name: &str) {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static WANTED: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static VISITS: AtomicU64 = AtomicU64::new(0);
    let wanted = WANTED.get_or_init(|| {
        let value = std::env::var("AA_POLICYD_FAULT").ok()?;
        let (point, nth) = match value.split_once(':') {
            Some((point, nth)) => (point.to_owned(), nth.parse().ok()?),
            None => (value, 1),
        };
        Some((point, nth))
    });
    if let Some((point, nth)) = wanted
        && point == name
        && VISITS.fetch_add(1, Ordering::SeqCst) + 1 == *nth
    {
        // SAFETY: signalling ourselves.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}

/// Release builds have no fault points.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn point(_name: &str) {}
