//! Probe events: ring-buffer records decoded into `Event`s a person can read.
//!
//! Why this exists: the probes write fixed-size C records; operators need
//! "pid 4312 (python3) denied syscall ptrace (101): killed". Decoding lives
//! in one place so `exec`, the daemon's logs and `status` say the same thing.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::control::wire::DenialCounts;
use crate::loader::abi::{self, RawEvent};
use crate::loader::io_uring_ops;
use crate::ruleset::{Arch, Mode};

/// Why a syscall-level action was denied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenyReason {
    /// Not in the allowlist (or entered through the ia32/x32 tables).
    NotAllowed,
    /// Never allowed to a confined task, whatever the policy (`bpf`).
    Integrity,
    /// A socket family the egress allowlist cannot judge.
    SocketFamily(u32),
    /// New namespaces through clone/clone3, judged as `unshare`.
    Namespace { clone_flags: u32 },
    /// ptrace-class access to a process outside the confinement.
    PtraceTarget { target: i32 },
    /// Opened the memory of a process outside the confinement.
    ProcessMemory { target: i32 },
    /// An io_uring request standing for a syscall that is not allowed.
    IoUring { opcode: u32 },
    /// A confined task created without syscall tracing (must never happen).
    Untraced { tid: u32 },
    /// A task whose creation was denied, at its first syscall.
    Doomed,
    /// An unlink or rename of one of the loader's pins.
    Pin,
    /// A new process sharing its creator's descriptors or memory.
    Sharing { clone_flags: u32 },
    /// A signal to the loader holding the pins.
    Loader { target: i32 },
    /// An io_uring open into a direct descriptor (not an fd).
    IoUringDirect { opcode: u32 },
}

/// A socket, option or packet the egress allowlist cannot judge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetDenial {
    RawSocket {
        socket_type: u32,
        protocol: u32,
    },
    PingSocket {
        protocol: u32,
    },
    Protocol {
        protocol: u32,
    },
    RoutingOption {
        level: u32,
        option: u32,
    },
    RoutingPacket,
    /// Under host rules, a DNS packet that did not go to the resolver.
    DnsPacket,
}

/// Why a file access was denied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileDenial {
    /// A `filesystem.deny` prefix covers the path.
    DeniedBy { rule: String },
    /// The access has an allowlist and no prefix of it covers the path.
    NotAllowed,
    /// The path could not be resolved in full (too deep, or its name
    /// unreadable), so it is judged denied.
    Unresolved,
    /// A block device opened, or a device node made, while path rules are
    /// in force: a device reaches files around them.
    Device,
    /// Its name (or openat2's flags) in the process's memory changed while
    /// the kernel used it: what the kernel acted on cannot be known.
    Changed,
}

/// The accesses a denial names (`read`, `write`, `read+write`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccessBits(pub u8);

impl fmt::Display for AccessBits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let read = self.0 & abi::ACCESS_READ != 0;
        let write = self.0 & abi::ACCESS_WRITE != 0;
        f.write_str(match (read, write) {
            (true, true) => "read+write",
            (true, false) => "read",
            (false, true) => "write",
            (false, false) => "no access",
        })
    }
}

/// What a confined process did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A syscall (or io_uring request, or clone) it may not make.
    DeniedSyscall {
        number: i64,
        name: Option<&'static str>,
        compat: bool,
        reason: DenyReason,
    },
    /// A socket, socket option or packet that would escape the allowlist.
    DeniedNet { family: u16, denial: NetDenial },
    /// A connect or sendmsg to a destination not in the egress allowlist.
    DeniedConnect { destination: SocketAddr },
    /// A file access (by open, exec, or a call that changes a name) the
    /// path rules do not allow; `path` is the resolved path (its first
    /// 255 bytes).
    DeniedFile {
        number: i64,
        name: Option<&'static str>,
        path: String,
        access: AccessBits,
        denial: FileDenial,
    },
    /// An exec of `path`.
    Exec { path: String },
    /// The last thread of the process exited.
    Exit,
}

/// One decoded probe event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub pid: u32,
    pub tgid: u32,
    pub comm: String,
    pub mode: Mode,
    pub kind: EventKind,
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

impl Event {
    /// Decodes a ring-buffer record; `None` for a short or unknown record.
    pub fn decode(bytes: &[u8]) -> Option<Event> {
        let raw = RawEvent::from_bytes(bytes)?;
        let kind = match raw.kind {
            abi::EVENT_SYSCALL => EventKind::DeniedSyscall {
                number: raw.syscall_nr,
                name: u32::try_from(raw.syscall_nr)
                    .ok()
                    .filter(|_| raw.compat == 0)
                    .and_then(|n| Arch::native().syscall_name(n)),
                compat: raw.compat != 0,
                reason: DenyReason::decode(raw.reason, raw.detail)?,
            },
            abi::EVENT_NET => EventKind::DeniedNet {
                family: raw.family,
                denial: NetDenial::decode(raw.reason, raw.detail)?,
            },
            abi::EVENT_CONNECT => {
                let ip = if raw.family == libc::AF_INET as u16 {
                    let mut v4 = [0u8; 4];
                    v4.copy_from_slice(&raw.addr[..4]);
                    IpAddr::V4(Ipv4Addr::from(v4))
                } else {
                    IpAddr::V6(Ipv6Addr::from(raw.addr))
                };
                EventKind::DeniedConnect {
                    destination: SocketAddr::new(ip, raw.port),
                }
            }
            abi::EVENT_EXEC => EventKind::Exec {
                path: c_string(&raw.path),
            },
            abi::EVENT_EXIT => EventKind::Exit,
            abi::EVENT_FILE => {
                let path = c_string(&raw.path);
                EventKind::DeniedFile {
                    number: raw.syscall_nr,
                    name: u32::try_from(raw.syscall_nr)
                        .ok()
                        .and_then(|n| Arch::native().syscall_name(n)),
                    access: AccessBits((raw.detail & 0xff) as u8),
                    denial: FileDenial::decode(raw.reason, raw.detail >> 8, &raw.path)?,
                    path,
                }
            }
            _ => return None,
        };
        Some(Event {
            pid: raw.pid,
            tgid: raw.tgid,
            comm: c_string(&raw.comm),
            mode: if raw.mode == abi::MODE_AUDIT {
                Mode::Audit
            } else {
                Mode::Enforce
            },
            kind,
        })
    }

    /// The short name used as the `AA_EVENT` log field.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            EventKind::DeniedSyscall { .. } => "denied_syscall",
            EventKind::DeniedNet { .. } => "denied_net",
            EventKind::DeniedConnect { .. } => "denied_connect",
            EventKind::DeniedFile { .. } => "denied_file",
            EventKind::Exec { .. } => "exec",
            EventKind::Exit => "exit",
        }
    }

    /// The syscall name for a denied syscall: its name, `compat#N` for the
    /// ia32/x32 tables, `#N` for a number the table does not have, and
    /// `none` for a number below 0 (no syscall: -1 is what a tracer or
    /// seccomp leaves when it skips a call, or an invalid number).
    pub fn syscall(&self) -> Option<String> {
        match &self.kind {
            EventKind::DeniedFile { number, name, .. } => Some(match name {
                Some(name) => (*name).to_owned(),
                None => format!("#{number}"),
            }),
            EventKind::DeniedSyscall {
                number,
                name,
                compat,
                ..
            } => Some(match (name, compat) {
                (_, true) => format!("compat#{number}"),
                (Some(name), false) => (*name).to_owned(),
                (None, false) if *number < 0 => "none".to_owned(),
                (None, false) => format!("#{number}"),
            }),
            _ => None,
        }
    }

    /// The `REASON` log field of a denial.
    pub fn reason(&self) -> Option<String> {
        match &self.kind {
            EventKind::DeniedSyscall { reason, .. } => Some(reason.to_string()),
            EventKind::DeniedNet { denial, .. } => Some(denial.to_string()),
            EventKind::DeniedFile { denial, .. } => Some(denial.to_string()),
            _ => None,
        }
    }
}

impl FileDenial {
    /// `rule_bytes`: the length of the deciding rule's key (the prefix and
    /// the `\0` or `/` after it), for a deny rule.
    fn decode(reason: u32, rule_bytes: u32, path: &[u8]) -> Option<FileDenial> {
        Some(match reason {
            abi::FILE_DENIED => {
                let key = path.get(..rule_bytes as usize).unwrap_or(path);
                let prefix = match key.split_last() {
                    Some((b'/' | 0, rest)) if !rest.is_empty() => rest,
                    _ => key,
                };
                FileDenial::DeniedBy {
                    rule: String::from_utf8_lossy(prefix).into_owned(),
                }
            }
            abi::FILE_NOT_ALLOWED => FileDenial::NotAllowed,
            abi::FILE_UNRESOLVED => FileDenial::Unresolved,
            abi::FILE_DEVICE => FileDenial::Device,
            abi::FILE_CHANGED => FileDenial::Changed,
            _ => return None,
        })
    }
}

impl fmt::Display for FileDenial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileDenial::DeniedBy { rule } => write!(f, "denied by the filesystem.deny rule {rule}"),
            FileDenial::NotAllowed => write!(f, "no prefix of its allowlist covers it"),
            FileDenial::Unresolved => write!(
                f,
                "its path could not be resolved in full (too deep, or its name unreadable), so it is denied"
            ),
            FileDenial::Changed => write!(
                f,
                "its name changed in memory while the kernel used it (another thread rewrote it), so it is denied"
            ),
            FileDenial::Device => write!(
                f,
                "a block device or a new device node reaches files around the path rules"
            ),
        }
    }
}

impl DenyReason {
    fn decode(reason: u32, detail: u32) -> Option<DenyReason> {
        Some(match reason {
            abi::REASON_NOT_ALLOWED => DenyReason::NotAllowed,
            abi::REASON_INTEGRITY => DenyReason::Integrity,
            abi::REASON_SOCKET_FAMILY => DenyReason::SocketFamily(detail),
            abi::REASON_NAMESPACE => DenyReason::Namespace {
                clone_flags: detail,
            },
            abi::REASON_PTRACE_TARGET => DenyReason::PtraceTarget {
                target: detail as i32,
            },
            abi::REASON_PROC_MEM => DenyReason::ProcessMemory {
                target: detail as i32,
            },
            abi::REASON_IO_URING_OP => DenyReason::IoUring { opcode: detail },
            abi::REASON_UNTRACED => DenyReason::Untraced { tid: detail },
            abi::REASON_DOOMED => DenyReason::Doomed,
            abi::REASON_PIN => DenyReason::Pin,
            abi::REASON_SHARING => DenyReason::Sharing {
                clone_flags: detail,
            },
            abi::REASON_LOADER => DenyReason::Loader {
                target: detail as i32,
            },
            abi::REASON_IO_URING_DIRECT => DenyReason::IoUringDirect { opcode: detail },
            _ => return None,
        })
    }
}

/// A process named by number, or "an unknown process" for -1.
fn process_name(pid: i32) -> String {
    if pid > 0 {
        format!("process {pid}")
    } else {
        "a process it cannot name".to_owned()
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenyReason::NotAllowed => write!(f, "not in the allowlist"),
            DenyReason::Integrity => write!(f, "never allowed to a confined process"),
            DenyReason::SocketFamily(family) => write!(
                f,
                "socket family {} cannot be checked against the egress allowlist",
                socket_family_name(*family)
            ),
            DenyReason::Namespace { clone_flags } => write!(
                f,
                "clone with namespace flags {clone_flags:#x}, judged as unshare, which is not allowed"
            ),
            DenyReason::PtraceTarget { target } => write!(
                f,
                "ptrace-class access to {}, which is not confined",
                process_name(*target)
            ),
            DenyReason::ProcessMemory { target } => write!(
                f,
                "opened the memory of {}, which is not confined",
                process_name(*target)
            ),
            DenyReason::IoUring { opcode } => write!(
                f,
                "io_uring request {} stands for a syscall that is not allowed",
                io_uring_ops::name(*opcode).map_or_else(|| format!("#{opcode}"), str::to_owned)
            ),
            DenyReason::Untraced { tid } => write!(
                f,
                "task {tid} was created without syscall tracing, so it could not be confined"
            ),
            DenyReason::Doomed => write!(f, "its creation was denied"),
            DenyReason::Pin => write!(
                f,
                "it names one of the pins that keep the confinement attached"
            ),
            DenyReason::Sharing { clone_flags } => write!(
                f,
                "clone with flags {clone_flags:#x} makes a process that shares its creator's descriptors or memory"
            ),
            DenyReason::Loader { target } => write!(
                f,
                "it signals {} (the loader that keeps the confinement attached, or every process)",
                process_name(*target)
            ),
            DenyReason::IoUringDirect { opcode } => write!(
                f,
                "io_uring request {} puts a file into a direct descriptor (or passes one), which cannot be checked",
                io_uring_ops::name(*opcode).map_or_else(|| format!("#{opcode}"), str::to_owned)
            ),
        }
    }
}

fn socket_family_name(family: u32) -> String {
    let name = match family as i32 {
        libc::AF_PACKET => "AF_PACKET",
        libc::AF_VSOCK => "AF_VSOCK",
        libc::AF_XDP => "AF_XDP",
        libc::AF_BLUETOOTH => "AF_BLUETOOTH",
        libc::AF_CAN => "AF_CAN",
        libc::AF_TIPC => "AF_TIPC",
        libc::AF_ALG => "AF_ALG",
        libc::AF_KEY => "AF_KEY",
        libc::AF_RDS => "AF_RDS",
        _ => return format!("#{family}"),
    };
    name.to_owned()
}

impl NetDenial {
    fn decode(reason: u32, detail: u32) -> Option<NetDenial> {
        let (high, low) = (detail >> 16, detail & 0xffff);
        Some(match reason {
            abi::NET_RAW_SOCKET => NetDenial::RawSocket {
                socket_type: high,
                protocol: low,
            },
            abi::NET_PING_SOCKET => NetDenial::PingSocket { protocol: low },
            abi::NET_PROTOCOL => NetDenial::Protocol { protocol: low },
            abi::NET_ROUTING_OPTION => NetDenial::RoutingOption {
                level: high,
                option: low,
            },
            abi::NET_ROUTING_PACKET => NetDenial::RoutingPacket,
            abi::NET_DNS_PACKET => NetDenial::DnsPacket,
            _ => return None,
        })
    }
}

impl fmt::Display for NetDenial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetDenial::RawSocket { protocol, .. } => {
                write!(f, "raw socket (protocol {protocol})")
            }
            NetDenial::PingSocket { .. } => write!(f, "ICMP (ping) socket"),
            NetDenial::Protocol { protocol } => write!(
                f,
                "transport protocol {protocol} (only TCP, UDP and UDP-Lite)"
            ),
            NetDenial::RoutingOption { level: 0, .. } => {
                write!(f, "IPv4 options (source routing) set with setsockopt")
            }
            NetDenial::RoutingOption { .. } => {
                write!(f, "IPv6 routing header set with setsockopt")
            }
            NetDenial::RoutingPacket => write!(
                f,
                "packet with IPv4 options or an IPv6 routing header (ancillary data)"
            ),
            NetDenial::DnsPacket => write!(
                f,
                "DNS packet (port 53) that bypassed the resolver (a socket connected before host rules were in force)"
            ),
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let who = format!("pid {} ({})", self.pid, self.comm);
        let outcome = |killed: &'static str| match self.mode {
            Mode::Enforce => killed,
            Mode::Audit => "audit only, allowed",
        };
        match &self.kind {
            EventKind::DeniedSyscall {
                number,
                compat,
                reason,
                ..
            } => {
                let name = self.syscall().unwrap_or_default();
                let table = if *compat {
                    " from the ia32/x32 table"
                } else {
                    ""
                };
                write!(
                    f,
                    "{who} denied syscall {name} ({number}){table}, {reason}: {}",
                    outcome("killed")
                )
            }
            EventKind::DeniedNet { denial, .. } => {
                write!(
                    f,
                    "{who} denied {denial}: {}",
                    outcome("refused with EPERM")
                )
            }
            EventKind::DeniedConnect { destination } => {
                write!(
                    f,
                    "{who} denied connect to {destination}: {}",
                    outcome("refused with EPERM")
                )
            }
            EventKind::DeniedFile {
                path,
                access,
                denial,
                ..
            } => {
                let call = self.syscall().unwrap_or_default();
                write!(
                    f,
                    "{who} denied {access} of {path} ({call}), {denial}: {}",
                    outcome("killed")
                )
            }
            EventKind::Exec { path } => write!(f, "{who} exec {path}"),
            EventKind::Exit => write!(f, "process {} ({}) exited", self.tgid, self.comm),
        }
    }
}

impl Event {
    /// The path and access of a denied file access, for the `PATH` and
    /// `ACCESS` log fields.
    pub fn file(&self) -> Option<(&str, String)> {
        match &self.kind {
            EventKind::DeniedFile { path, access, .. } => Some((path, access.to_string())),
            _ => None,
        }
    }

    /// The destination of a denied connect, for the `DEST` log field.
    pub fn destination(&self) -> Option<String> {
        match &self.kind {
            EventKind::DeniedConnect { destination } => Some(destination.to_string()),
            _ => None,
        }
    }

    /// Logs the event with structured fields (`AA_EVENT`, `PID`, `COMM`,
    /// `SYSCALL`, `DEST` in journald).
    pub fn log(&self) {
        let (aa_event, pid, comm) = (self.kind_name(), self.pid, self.comm.as_str());
        match self.kind {
            EventKind::Exec { .. } | EventKind::Exit => {
                tracing::info!(aa_event, pid, comm, "{self}")
            }
            EventKind::DeniedSyscall { .. } | EventKind::DeniedNet { .. } => {
                tracing::warn!(
                    aa_event,
                    pid,
                    comm,
                    syscall = self.syscall().as_deref(),
                    reason = self.reason().as_deref(),
                    "{self}"
                )
            }
            EventKind::DeniedConnect { .. } => {
                tracing::warn!(
                    aa_event,
                    pid,
                    comm,
                    dest = self.destination().as_deref(),
                    "{self}"
                )
            }
            EventKind::DeniedFile { .. } => {
                let (path, access) = self.file().unwrap_or_default();
                tracing::warn!(
                    aa_event,
                    pid,
                    comm,
                    syscall = self.syscall().as_deref(),
                    path,
                    access,
                    reason = self.reason().as_deref(),
                    "{self}"
                )
            }
        }
    }
}

/// Denials counted as they are read, for `status` (the event reader adds,
/// the control socket reads).
#[derive(Debug, Default)]
pub struct DenialCounter {
    syscall: AtomicU64,
    egress: AtomicU64,
    file: AtomicU64,
    dns: AtomicU64,
}

impl DenialCounter {
    pub fn count(&self, event: &Event) {
        let counter = match event.kind {
            EventKind::DeniedSyscall { .. } => &self.syscall,
            EventKind::DeniedNet { .. } | EventKind::DeniedConnect { .. } => &self.egress,
            EventKind::DeniedFile { .. } => &self.file,
            EventKind::Exec { .. } | EventKind::Exit => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A query the resolver refused (or reported, in audit mode).
    pub fn count_dns(&self) {
        self.dns.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> DenialCounts {
        DenialCounts {
            syscall: self.syscall.load(Ordering::Relaxed),
            egress: self.egress.load(Ordering::Relaxed),
            file: self.file.load(Ordering::Relaxed),
            dns: self.dns.load(Ordering::Relaxed),
        }
    }
}

/// Hands every event waiting in the probes' ring buffer to `on_event`.
pub fn drain(ring: &mut aya::maps::RingBuf<aya::maps::MapData>, mut on_event: impl FnMut(Event)) {
    while let Some(item) = ring.next() {
        if let Some(event) = Event::decode(&item) {
            on_event(event);
        }
    }
}

/// Waits until the ring buffer has data or `timeout_ms` passes.
pub fn wait_readable(ring: &aya::maps::RingBuf<aya::maps::MapData>, timeout_ms: i32) {
    let mut pollfd = libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(ring),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut pollfd, 1, timeout_ms) };
}

/// A one-second window that admits up to `per_second` things and counts
/// the rest: how floods are logged (probe events, denied DNS queries).
#[derive(Debug)]
pub struct FloodWindow {
    per_second: u32,
    started: std::time::Instant,
    admitted: u32,
    suppressed: u64,
}

impl FloodWindow {
    pub fn new(per_second: u32) -> Self {
        FloodWindow {
            per_second,
            started: std::time::Instant::now(),
            admitted: 0,
            suppressed: 0,
        }
    }

    /// Whether one more may be logged in this second (else it is counted).
    pub fn admit(&mut self) -> bool {
        if self.admitted < self.per_second {
            self.admitted += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }

    /// Ends the window if its second is over, returning how many it did
    /// not admit; `None` while the second lasts.
    pub fn roll(&mut self) -> Option<u64> {
        if self.started.elapsed() < std::time::Duration::from_secs(1) {
            return None;
        }
        let suppressed = self.suppressed;
        *self = FloodWindow::new(self.per_second);
        Some(suppressed)
    }
}

/// Logs every event, up to `per_second` a second; beyond that, counts them
/// and logs how many were suppressed once the flood's second is over,
/// together with how many the kernel dropped (ring buffer full).
pub struct RateLimitedLog {
    window: FloodWindow,
    kernel_drops: u64,
}

impl RateLimitedLog {
    /// `kernel_drops`: the probes' running total of drops now (the counter
    /// outlives a restart, and what was lost before is not this run's news).
    pub fn new(per_second: u32, kernel_drops: u64) -> Self {
        RateLimitedLog {
            window: FloodWindow::new(per_second),
            kernel_drops,
        }
    }

    pub fn log(&mut self, event: &Event) {
        if self.window.admit() {
            event.log();
        }
    }

    /// Ends the current second if it is over, reporting what was
    /// suppressed and any new kernel drops (`kernel_drops` is the probes'
    /// running total, when known).
    pub fn roll_window(&mut self, kernel_drops: Option<u64>) {
        let Some(suppressed) = self.window.roll() else {
            return;
        };
        let new_drops = kernel_drops.map_or(0, |total| total.saturating_sub(self.kernel_drops));
        if let Some(total) = kernel_drops {
            self.kernel_drops = total;
        }
        if suppressed > 0 || new_drops > 0 {
            tracing::warn!(
                aa_event = "suppressed",
                suppressed,
                drops = new_drops,
                "event flood: {suppressed} events not logged in the last second, {new_drops} lost in the kernel ring buffer ({} lost in total)",
                self.kernel_drops
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(kind: u32, nr: i64, reason: u32, detail: u32) -> Vec<u8> {
        let event = RawEvent {
            kind,
            pid: 7,
            tgid: 7,
            mode: abi::MODE_ENFORCE,
            syscall_nr: nr,
            compat: 0,
            family: 0,
            port: 0,
            addr: [0; 16],
            comm: *b"agent\0\0\0\0\0\0\0\0\0\0\0",
            path: [0; abi::MAX_PATH],
            reason,
            detail,
        };
        // SAFETY: RawEvent is repr(C) plain data; its bytes are what the
        // ring buffer hands over.
        unsafe {
            std::slice::from_raw_parts(
                (&event as *const RawEvent).cast::<u8>(),
                std::mem::size_of::<RawEvent>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn a_syscall_number_of_minus_one_is_no_syscall_and_not_a_compat_entry() {
        let event = Event::decode(&raw(abi::EVENT_SYSCALL, -1, abi::REASON_NOT_ALLOWED, 0))
            .expect("decodes");
        assert_eq!(event.syscall().as_deref(), Some("none"));
        assert_eq!(
            event.to_string(),
            "pid 7 (agent) denied syscall none (-1), not in the allowlist: killed"
        );
    }

    #[test]
    fn each_reason_says_why_in_words() {
        let cases = [
            (
                abi::REASON_INTEGRITY,
                0,
                "never allowed to a confined process",
            ),
            (abi::REASON_SOCKET_FAMILY, 17, "socket family AF_PACKET"),
            (abi::REASON_NAMESPACE, 0x1000_0000, "judged as unshare"),
            (
                abi::REASON_PTRACE_TARGET,
                42,
                "process 42, which is not confined",
            ),
            (abi::REASON_PROC_MEM, 42, "opened the memory of process 42"),
            (abi::REASON_IO_URING_OP, 36, "io_uring request UNLINKAT"),
            (abi::REASON_PIN, 0, "names one of the pins"),
            (
                abi::REASON_SHARING,
                0x400,
                "shares its creator's descriptors",
            ),
            (abi::REASON_LOADER, 42, "signals process 42"),
            (
                abi::REASON_IO_URING_DIRECT,
                18,
                "OPENAT puts a file into a direct descriptor",
            ),
        ];
        for (reason, detail, words) in cases {
            let event =
                Event::decode(&raw(abi::EVENT_SYSCALL, 1, reason, detail)).expect("decodes");
            assert!(event.to_string().contains(words), "{event}");
        }
        let unknown = raw(abi::EVENT_SYSCALL, 1, 99, 0);
        assert!(
            Event::decode(&unknown).is_none(),
            "an unknown reason is not guessed"
        );
    }

    /// A file event as the probe writes it: `path`, and in `detail` the
    /// denied access bits plus the deciding key's length in bytes.
    fn raw_file(path: &str, reason: u32, access: u32, rule_bytes: u32) -> Vec<u8> {
        let mut bytes = raw(abi::EVENT_FILE, 257, reason, access | rule_bytes << 8);
        let offset = std::mem::offset_of!(RawEvent, path);
        bytes[offset..offset + path.len()].copy_from_slice(path.as_bytes());
        bytes
    }

    #[test]
    fn a_file_denial_names_the_path_the_access_and_the_rule_that_decided() {
        // Key "/etc/shadow\0" (12 bytes): the rule on /etc/shadow itself.
        let exact =
            Event::decode(&raw_file("/etc/shadow", abi::FILE_DENIED, 1, 12)).expect("decodes");
        assert_eq!(
            exact.to_string(),
            "pid 7 (agent) denied read of /etc/shadow (openat), denied by the filesystem.deny rule /etc/shadow: killed"
        );
        // Key "/srv/" (5 bytes): the rule on /srv, covering what is below.
        let below =
            Event::decode(&raw_file("/srv/app/x", abi::FILE_DENIED, 3, 5)).expect("decodes");
        assert_eq!(
            below.kind,
            EventKind::DeniedFile {
                number: 257,
                name: Some("openat"),
                path: "/srv/app/x".into(),
                access: AccessBits(3),
                denial: FileDenial::DeniedBy {
                    rule: "/srv".into()
                },
            }
        );
        assert!(
            below
                .to_string()
                .contains("denied read+write of /srv/app/x")
        );
        // Key "/" (1 byte): a rule on the root.
        let root = Event::decode(&raw_file("/x", abi::FILE_DENIED, 2, 1)).expect("decodes");
        assert!(
            root.to_string().contains("filesystem.deny rule /:"),
            "{root}"
        );
        let outside = Event::decode(&raw_file("/x", abi::FILE_NOT_ALLOWED, 2, 0)).expect("decodes");
        assert!(
            outside
                .to_string()
                .contains("denied write of /x (openat), no prefix of its allowlist covers it")
        );
        assert_eq!(outside.kind_name(), "denied_file");
        assert!(Event::decode(&raw_file("/x", 9, 2, 0)).is_none());
    }
}
