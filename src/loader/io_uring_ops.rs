//! What each io_uring request stands for, as a syscall: the table the
//! io_uring guard probe judges requests by (`IO_URING_OPS`).
//!
//! Why this exists: an io_uring request runs no syscall, so a confined
//! task's ring would step around the allowlist. Judging each request as the
//! syscall that does the same thing keeps one allowlist for both paths. An
//! opcode missing here (newer than this table) is never allowed to a
//! confined task.

use super::abi::{IO_URING_OP_NO_SYSCALL, IO_URING_OP_UNKNOWN};
use crate::ruleset::Arch;

/// `(opcode, name, the syscall it stands for)`; `None`: no syscall does
/// what it does (timeouts, cancellation, buffer bookkeeping), so it is
/// judged by `io_uring_enter` alone. Opcodes from Linux 6.18's
/// `enum io_uring_op`.
pub const IO_URING_OPS: [(u8, &str, Option<&str>); 63] = [
    (0, "NOP", None),
    (1, "READV", Some("readv")),
    (2, "WRITEV", Some("writev")),
    (3, "FSYNC", Some("fsync")),
    (4, "READ_FIXED", Some("pread64")),
    (5, "WRITE_FIXED", Some("pwrite64")),
    (6, "POLL_ADD", Some("poll")),
    (7, "POLL_REMOVE", None),
    (8, "SYNC_FILE_RANGE", Some("sync_file_range")),
    (9, "SENDMSG", Some("sendmsg")),
    (10, "RECVMSG", Some("recvmsg")),
    (11, "TIMEOUT", None),
    (12, "TIMEOUT_REMOVE", None),
    (13, "ACCEPT", Some("accept4")),
    (14, "ASYNC_CANCEL", None),
    (15, "LINK_TIMEOUT", None),
    (16, "CONNECT", Some("connect")),
    (17, "FALLOCATE", Some("fallocate")),
    (18, "OPENAT", Some("openat")),
    (19, "CLOSE", Some("close")),
    (20, "FILES_UPDATE", Some("dup3")),
    (21, "STATX", Some("statx")),
    (22, "READ", Some("pread64")),
    (23, "WRITE", Some("pwrite64")),
    (24, "FADVISE", Some("fadvise64")),
    (25, "MADVISE", Some("madvise")),
    (26, "SEND", Some("sendto")),
    (27, "RECV", Some("recvfrom")),
    (28, "OPENAT2", Some("openat2")),
    (29, "EPOLL_CTL", Some("epoll_ctl")),
    (30, "SPLICE", Some("splice")),
    (31, "PROVIDE_BUFFERS", None),
    (32, "REMOVE_BUFFERS", None),
    (33, "TEE", Some("tee")),
    (34, "SHUTDOWN", Some("shutdown")),
    (35, "RENAMEAT", Some("renameat2")),
    (36, "UNLINKAT", Some("unlinkat")),
    (37, "MKDIRAT", Some("mkdirat")),
    (38, "SYMLINKAT", Some("symlinkat")),
    (39, "LINKAT", Some("linkat")),
    (40, "MSG_RING", None),
    (41, "FSETXATTR", Some("fsetxattr")),
    (42, "SETXATTR", Some("setxattr")),
    (43, "FGETXATTR", Some("fgetxattr")),
    (44, "GETXATTR", Some("getxattr")),
    (45, "SOCKET", Some("socket")),
    (46, "URING_CMD", Some("ioctl")),
    (47, "SEND_ZC", Some("sendto")),
    (48, "SENDMSG_ZC", Some("sendmsg")),
    (49, "READ_MULTISHOT", Some("read")),
    (50, "WAITID", Some("waitid")),
    (51, "FUTEX_WAIT", Some("futex")),
    (52, "FUTEX_WAKE", Some("futex")),
    (53, "FUTEX_WAITV", Some("futex_waitv")),
    (54, "FIXED_FD_INSTALL", Some("dup3")),
    (55, "FTRUNCATE", Some("ftruncate")),
    (56, "BIND", Some("bind")),
    (57, "LISTEN", Some("listen")),
    (58, "RECV_ZC", Some("recvfrom")),
    (59, "EPOLL_WAIT", Some("epoll_wait")),
    (60, "READV_FIXED", Some("preadv")),
    (61, "WRITEV_FIXED", Some("pwritev")),
    (62, "PIPE", Some("pipe2")),
];

/// The `IO_URING_OPS` value of every opcode 0..=255 on `arch`.
pub fn table(arch: Arch) -> [i32; 256] {
    let mut values = [IO_URING_OP_UNKNOWN; 256];
    for (opcode, _, syscall) in IO_URING_OPS {
        values[usize::from(opcode)] = match syscall {
            None => IO_URING_OP_NO_SYSCALL,
            Some(name) => arch
                .syscall_number(name)
                .map_or(IO_URING_OP_UNKNOWN, |nr| nr as i32),
        };
    }
    values
}

/// The name of opcode `opcode`, for events.
pub fn name(opcode: u32) -> Option<&'static str> {
    IO_URING_OPS
        .iter()
        .find(|(op, _, _)| u32::from(*op) == opcode)
        .map(|(_, name, _)| *name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_opcode_is_listed_once_in_order_and_every_syscall_exists_on_x86_64() {
        for (index, (opcode, _, syscall)) in IO_URING_OPS.iter().enumerate() {
            assert_eq!(usize::from(*opcode), index);
            if let Some(name) = syscall {
                assert!(
                    Arch::X86_64.syscall_number(name).is_some(),
                    "{name} is an x86_64 syscall"
                );
            }
        }
    }

    #[test]
    fn unlisted_opcodes_are_unknown_and_listed_ones_stand_for_their_syscall() {
        let values = table(Arch::X86_64);
        assert_eq!(values[200], IO_URING_OP_UNKNOWN);
        assert_eq!(values[0], IO_URING_OP_NO_SYSCALL);
        assert_eq!(
            values[36],
            Arch::X86_64
                .syscall_number("unlinkat")
                .map(|n| n as i32)
                .unwrap_or(-9)
        );
    }
}
