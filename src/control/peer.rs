//! Who is on the other end of the control socket, and may they act.
//!
//! Why this exists: the socket can confine and release processes and change
//! the policy, so every connection's credentials are checked as the kernel
//! recorded them at connect time (SO_PEERCRED, SO_PEERGROUPS), not as the
//! client claims them. Root and members of `aa-policy` may act; anyone else
//! is told so and disconnected. A confined process may not use the socket at
//! all, even as root: it could release itself. The file mode (0660,
//! root:aa-policy) is the first line; these checks are the second.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The credentials of a connected peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub pid: Option<u32>,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl Peer {
    /// Reads the peer's credentials from a connected Unix socket.
    pub fn of(socket: &impl AsRawFd) -> io::Result<Peer> {
        let fd = socket.as_raw_fd();
        // SAFETY: getsockopt writes at most `len` bytes into `cred`.
        let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&mut cred as *mut libc::ucred).cast(),
                &mut len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Peer {
            pid: u32::try_from(cred.pid).ok().filter(|&p| p > 0),
            uid: cred.uid,
            gid: cred.gid,
            groups: peer_groups(fd)?,
        })
    }

    /// Whether this peer may use the socket: root, or a member of `group`.
    pub fn authorized(&self, group: Option<u32>) -> bool {
        self.uid == 0 || group.is_some_and(|g| self.gid == g || self.groups.contains(&g))
    }
}

impl Peer {
    /// Whether this peer may confine or release `pid`: root may act on any
    /// process; a member of the control group only on its own (a process
    /// whose real uid is the peer's), so the group grants policy work, not
    /// power over other users' processes.
    pub fn may_manage(&self, pid: u32) -> Result<(), String> {
        if self.uid == 0 {
            return Ok(());
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map_err(|_| format!("pid {pid}: no such process"))?;
        let owner = status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().next()?.parse::<u32>().ok())
            .ok_or_else(|| format!("pid {pid}: cannot read its owner"))?;
        if owner == self.uid {
            Ok(())
        } else {
            Err(format!(
                "permission denied: pid {pid} belongs to uid {owner}; only root may confine or release another user's process"
            ))
        }
    }
}

/// Whether the process behind `pidfd` sees PIDs as the daemon does. A PID
/// in a request is read in the daemon's namespace; from a client in a
/// nested one (a container with the socket mounted in), the same number
/// names another process here, which would be confined in its place while
/// the client's own process ran free. The pidfd's `NSpid` line lists the
/// task's PID in each namespace from ours down to its own: one entry means
/// ours.
pub fn pid_namespace_is_ours(pidfd: &impl AsRawFd) -> Result<(), String> {
    let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()))
        .map_err(|e| format!("cannot read the client's PID namespace: {e}"))?;
    let levels = fdinfo
        .lines()
        .find_map(|line| line.strip_prefix("NSpid:"))
        .map(|pids| pids.split_whitespace().collect::<Vec<_>>());
    // A reaped process reads `-1`, one not visible here `0`.
    match levels.as_deref() {
        Some([pid]) if pid.parse::<i64>().is_ok_and(|pid| pid > 0) => Ok(()),
        _ => Err("refused: this client runs in another PID namespace (a container?), where a PID names a different process than in the daemon's; run confine and release from the daemon's PID namespace".to_owned()),
    }
}

/// A pidfd for the process that connected (SO_PEERPIDFD, Linux 6.5+; on an
/// older kernel `pidfd_open` of its pid, which it keeps while the
/// connection lives).
pub fn peer_pidfd(socket: &impl AsRawFd, peer: &Peer) -> io::Result<OwnedFd> {
    const SO_PEERPIDFD: libc::c_int = 77;
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `fd`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&mut fd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 && fd >= 0 {
        // SAFETY: the kernel just gave us this descriptor.
        return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    // Only a kernel without the option (before 6.5) falls back to the
    // number. Kernels 6.5-6.15 refuse it for a peer already reaped; its
    // number may name another process by now, so that is an error (and
    // the peer counts as one that cannot be checked).
    let error = if rc == 0 {
        io::Error::other("SO_PEERPIDFD gave no descriptor")
    } else {
        io::Error::last_os_error()
    };
    if error.raw_os_error() != Some(libc::ENOPROTOOPT) {
        return Err(error);
    }
    let pid = peer
        .pid
        .ok_or_else(|| io::Error::other("the peer has no pid in this namespace"))?;
    // SAFETY: plain syscall; the returned fd is ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// SO_PEERGROUPS: the peer's supplementary groups at connect time.
fn peer_groups(fd: i32) -> io::Result<Vec<u32>> {
    let mut groups = vec![0u32; 64];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<u32>()) as libc::socklen_t;
        // SAFETY: the buffer holds `len` bytes.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if rc == 0 {
            groups.truncate(len as usize / std::mem::size_of::<u32>());
            return Ok(groups);
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::ERANGE) && groups.len() < 65536 {
            groups.resize(groups.len() * 4, 0);
            continue;
        }
        return Err(error);
    }
}

/// The id of group `name`, through NSS like every other tool.
pub fn group_id(name: &str) -> Option<u32> {
    let c_name = CString::new(name).ok()?;
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: getgrnam_r writes into `group` and `buffer` only.
    let rc = unsafe {
        libc::getgrnam_r(
            c_name.as_ptr(),
            &mut group,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then_some(group.gr_gid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_group_members_are_authorized_others_are_not() {
        let peer = |uid, gid, groups: &[u32]| Peer {
            pid: None,
            uid,
            gid,
            groups: groups.to_vec(),
        };
        assert!(peer(0, 0, &[]).authorized(None));
        assert!(peer(1000, 999, &[]).authorized(Some(999)));
        assert!(peer(1000, 1000, &[5, 999]).authorized(Some(999)));
        assert!(!peer(1000, 1000, &[5]).authorized(Some(999)));
        assert!(!peer(1000, 1000, &[5]).authorized(None));
    }

    #[test]
    fn a_non_root_peer_may_manage_only_its_own_processes() {
        let peer = |uid| Peer {
            pid: None,
            uid,
            gid: uid,
            groups: Vec::new(),
        };
        // SAFETY: getuid cannot fail.
        let me = unsafe { libc::getuid() };
        assert!(peer(0).may_manage(1).is_ok());
        assert!(peer(me).may_manage(std::process::id()).is_ok());
        let stranger = peer(me.wrapping_add(4242));
        assert!(
            stranger
                .may_manage(std::process::id())
                .unwrap_err()
                .contains("permission denied")
        );
    }

    #[test]
    fn our_own_credentials_are_read_from_a_socket_pair() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let peer = Peer::of(&a).unwrap();
        assert_eq!(peer.pid, Some(std::process::id()));
        // SAFETY: getuid cannot fail.
        assert_eq!(peer.uid, unsafe { libc::getuid() });
    }
}
