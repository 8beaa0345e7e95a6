//! Telling systemd where the daemon is in its life (sd_notify), and the
//! process limits it starts with.
//!
//! Why this exists: with `Type=notify`, `systemctl start` returns only once
//! the policy is enforced (`READY=1`), `systemctl reload` waits for the
//! reload to finish (`RELOADING=1` + `MONOTONIC_USEC`, then `READY=1`), and
//! `systemctl status` shows the generation and last outcome (`STATUS=`).
//! Without `NOTIFY_SOCKET` every call is a no-op.

use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::warn!("sd_notify failed: {error}");
    }
}

/// The policy is enforced and the daemon serves requests.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload starts.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(error) => tracing::warn!("sd_notify: cannot read the monotonic clock: {error}"),
    }
}

/// A reload ended (whatever its outcome): ready again, with a new status.
pub fn reloaded(status: &str) {
    ready(status);
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// Raises the soft limit on open files to the hard one: every confined
/// process the daemon checks holds a pidfd, every client a socket, and a
/// reload that fails for want of a descriptor leaves a save unapplied.
pub fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit fill and read a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                tracing::warn!(
                    "could not raise the open-file limit: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}
