//! The probes' shared types as `#[repr(C)]` Rust: the mirror of
//! `probes/aa_policy.h`.
//!
//! Why this exists: userspace writes these bytes into pinned maps that the
//! kernel programs read. A field out of place would silently mean another
//! rule, so the layout is tested against `probes/abi_layout.txt`, which
//! `probes/build.sh` prints from the C header itself.

use crate::ruleset::SYSCALL_BITMAP_BITS;

/// Part of every pin path: a new layout never reuses an old pin.
pub const ABI_VERSION: u32 = 5;

/// How every pin's file name starts (`AA_PIN_PREFIX` in the probes). Not
/// a dot: bpffs refuses names with one.
pub const PIN_PREFIX: &str = "aa-policyd-";

pub const MODE_ENFORCE: u32 = 0;
pub const MODE_AUDIT: u32 = 1;

pub const EVENT_SYSCALL: u32 = 1;
pub const EVENT_CONNECT: u32 = 2;
pub const EVENT_EXEC: u32 = 3;
pub const EVENT_EXIT: u32 = 4;
pub const EVENT_NET: u32 = 5;
pub const EVENT_FILE: u32 = 6;

pub const REASON_NOT_ALLOWED: u32 = 0;
pub const REASON_INTEGRITY: u32 = 1;
pub const REASON_SOCKET_FAMILY: u32 = 2;
pub const REASON_NAMESPACE: u32 = 3;
pub const REASON_PTRACE_TARGET: u32 = 4;
pub const REASON_PROC_MEM: u32 = 5;
pub const REASON_IO_URING_OP: u32 = 6;
pub const REASON_UNTRACED: u32 = 7;
pub const REASON_DOOMED: u32 = 8;
pub const REASON_PIN: u32 = 9;
pub const REASON_SHARING: u32 = 10;
pub const REASON_LOADER: u32 = 11;
pub const REASON_IO_URING_DIRECT: u32 = 12;

/// `aa_event.reason` of an `EVENT_FILE`.
pub const FILE_DENIED: u32 = 1;
pub const FILE_NOT_ALLOWED: u32 = 2;
pub const FILE_UNRESOLVED: u32 = 3;
pub const FILE_DEVICE: u32 = 4;
pub const FILE_CHANGED: u32 = 5;

pub const NET_RAW_SOCKET: u32 = 1;
pub const NET_PING_SOCKET: u32 = 2;
pub const NET_PROTOCOL: u32 = 3;
pub const NET_ROUTING_OPTION: u32 = 4;
pub const NET_ROUTING_PACKET: u32 = 5;
pub const NET_DNS_PACKET: u32 = 6;

pub const ACCESS_READ: u8 = 1;
pub const ACCESS_WRITE: u8 = 2;

pub const COUNTER_EVENT_DROPS: u32 = 0;
pub const COUNTER_REGISTRY_FULL: u32 = 1;
pub const COUNTER_MARK_FAILED: u32 = 2;
pub const COUNTER_UNTRACED: u32 = 3;
pub const COUNTER_UNGUARDED_EXIT: u32 = 4;
/// How many counters there are.
pub const COUNTERS: u32 = 5;

/// `IO_URING_OPS` values besides a syscall number.
pub const IO_URING_OP_NO_SYSCALL: i32 = -2;
pub const IO_URING_OP_UNKNOWN: i32 = -1;

/// `aa_generation.egress_restricted`.
pub const EGRESS_UNRESTRICTED: u32 = 0;
pub const EGRESS_ALLOWLIST: u32 = 1;
pub const EGRESS_HOSTS: u32 = 2;

pub const SYSCALL_WORDS: usize = SYSCALL_BITMAP_BITS / 64;
pub const MAX_PATH: usize = 256;

/// `GENERATIONS[slot]`: the fixed-size rules of one generation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Generation {
    pub generation: u64,
    pub mode: u32,
    pub syscalls_restricted: u32,
    pub egress_restricted: u32,
    pub read_restricted: u32,
    pub write_restricted: u32,
    /// `ACCESS_*` bits that some deny rule covers (so a path the probe
    /// cannot resolve is denied for them too).
    pub path_denies: u32,
    pub syscall_allow: [u64; SYSCALL_WORDS],
    /// The sha256 of the policy text this generation came from (0: unknown).
    pub policy_sha256: [u8; 32],
}

/// `TASK_MARK` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TaskMark {
    pub confined: u32,
    /// `MARK_*` bits.
    pub flags: u32,
    /// Syscalls the guard judged for this task (kept by the probe).
    pub guarded: u64,
}

/// `CONFIG[0]`: what the probes know about the loader.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LoaderConfig {
    /// The inode of the loader's PID namespace (`/proc/self/ns/pid`).
    pub pid_ns_inum: u32,
    /// The loader's process group, in that namespace.
    pub loader_pgid: u32,
}

/// `PENDING` value (key: pid): a confine or a release in progress.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Pending {
    /// `/proc/PID/stat` starttime, so a reused PID is never taken for it.
    pub start_time: u64,
    /// 1 when the loader sent the SIGSTOP (and must send the SIGCONT).
    pub stopped_by_loader: u32,
    /// 1 for a release, 0 for a confine.
    pub releasing: u32,
}

/// `CONFINED` value (key: TGID).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Confined {
    pub parent_tgid: u32,
    pub _pad: u32,
}

/// `EGRESS4` key data (after the LPM prefix length): port, then address,
/// both in network byte order. The C struct's trailing padding is not part
/// of the key data aya sends, and no prefix reaches it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Egress4Data {
    pub port: u16,
    pub addr: [u8; 4],
    pub _pad: [u8; 2],
}

/// `EGRESS6` key data.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Egress6Data {
    pub port: u16,
    pub addr: [u8; 16],
    pub _pad: [u8; 2],
}

/// `EGRESS4`/`EGRESS6`/`PATHS` value: which slots hold the entry, and for
/// paths the access masks per slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleValue {
    pub prefixlen: u32,
    pub slots: u8,
    pub allow: [u8; 2],
    pub deny: [u8; 2],
    pub _pad: [u8; 3],
}

/// `PATHS` key data.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathData {
    pub path: [u8; MAX_PATH],
}

/// `LEARNED4` key: address and port (network order; 0 = any port).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Learned4Key {
    pub addr: [u8; 4],
    pub port: u16,
    pub _pad: u16,
}

/// `LEARNED6` key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Learned6Key {
    pub addr: [u8; 16],
    pub port: u16,
    pub _pad: u16,
}

/// `LEARNED4`/`LEARNED6` value: when the address stops being allowed
/// (`CLOCK_BOOTTIME` nanoseconds).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LearnedValue {
    pub expires_ns: u64,
}

/// `RESOLVER[0]`: the daemon resolver's loopback ports (network order; 0 =
/// not listening) and network namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResolverConfig {
    pub port4: u16,
    pub port6: u16,
    pub _pad: u32,
    pub netns_cookie: u64,
}

/// A ring-buffer event.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RawEvent {
    pub kind: u32,
    pub pid: u32,
    pub tgid: u32,
    pub mode: u32,
    pub syscall_nr: i64,
    pub compat: u32,
    pub family: u16,
    pub port: u16,
    pub addr: [u8; 16],
    pub comm: [u8; 16],
    pub path: [u8; MAX_PATH],
    pub reason: u32,
    pub detail: u32,
}

// SAFETY: plain-old-data with no pointers; every bit pattern is valid.
unsafe impl aya::Pod for Generation {}
unsafe impl aya::Pod for TaskMark {}
unsafe impl aya::Pod for Confined {}
unsafe impl aya::Pod for LoaderConfig {}
unsafe impl aya::Pod for Pending {}
unsafe impl aya::Pod for Egress4Data {}
unsafe impl aya::Pod for Egress6Data {}
unsafe impl aya::Pod for RuleValue {}
unsafe impl aya::Pod for PathData {}
unsafe impl aya::Pod for Learned4Key {}
unsafe impl aya::Pod for Learned6Key {}
unsafe impl aya::Pod for LearnedValue {}
unsafe impl aya::Pod for ResolverConfig {}

impl RawEvent {
    /// Reads an event from ring-buffer bytes; `None` if they are too short.
    pub fn from_bytes(bytes: &[u8]) -> Option<RawEvent> {
        if bytes.len() < std::mem::size_of::<RawEvent>() {
            return None;
        }
        // SAFETY: length checked; RawEvent is repr(C) plain data, read unaligned.
        Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<RawEvent>()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    /// `probes/abi_layout.txt`, as printed by the C compiler from the header.
    fn c_layout() -> std::collections::HashMap<String, usize> {
        let text = include_str!("../../probes/abi_layout.txt");
        text.lines()
            .filter_map(|line| {
                let mut parts = line.split_whitespace();
                let (_, name, value) = (parts.next()?, parts.next()?, parts.next()?);
                Some((name.to_owned(), value.parse().ok()?))
            })
            .collect()
    }

    #[test]
    fn rust_mirror_matches_the_c_header_layout() {
        let c = c_layout();
        let expect = |name: &str, rust: usize| {
            assert_eq!(c.get(name).copied(), Some(rust), "{name}");
        };
        expect("aa_generation", size_of::<Generation>());
        expect("aa_generation.mode", offset_of!(Generation, mode));
        expect(
            "aa_generation.syscall_allow",
            offset_of!(Generation, syscall_allow),
        );
        expect(
            "aa_generation.policy_sha256",
            offset_of!(Generation, policy_sha256),
        );
        expect("aa_task_mark", size_of::<TaskMark>());
        expect("aa_confined", size_of::<Confined>());
        // LPM keys: the C struct is `u32 prefixlen` + data.
        expect("aa_egress4_key", 4 + size_of::<Egress4Data>());
        expect("aa_egress4_key.port", 4 + offset_of!(Egress4Data, port));
        expect("aa_egress4_key.addr", 4 + offset_of!(Egress4Data, addr));
        expect("aa_egress6_key", 4 + size_of::<Egress6Data>());
        expect("aa_egress6_key.addr", 4 + offset_of!(Egress6Data, addr));
        expect("aa_rule_value", size_of::<RuleValue>());
        expect("aa_rule_value.slots", offset_of!(RuleValue, slots));
        expect("aa_rule_value.allow", offset_of!(RuleValue, allow));
        expect("aa_rule_value.deny", offset_of!(RuleValue, deny));
        expect("aa_path_key", 4 + size_of::<PathData>());
        expect("aa_event", size_of::<RawEvent>());
        expect("aa_event.syscall_nr", offset_of!(RawEvent, syscall_nr));
        expect("aa_event.compat", offset_of!(RawEvent, compat));
        expect("aa_event.family", offset_of!(RawEvent, family));
        expect("aa_event.port", offset_of!(RawEvent, port));
        expect("aa_event.addr", offset_of!(RawEvent, addr));
        expect("aa_event.comm", offset_of!(RawEvent, comm));
        expect("aa_event.path", offset_of!(RawEvent, path));
        expect("aa_event.reason", offset_of!(RawEvent, reason));
        expect("aa_event.detail", offset_of!(RawEvent, detail));
        expect("aa_task_mark.guarded", offset_of!(TaskMark, guarded));
        expect("aa_config", size_of::<LoaderConfig>());
        expect(
            "aa_config.loader_pgid",
            offset_of!(LoaderConfig, loader_pgid),
        );
    }
}
