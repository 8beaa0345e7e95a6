//! Probe events: ring-buffer records decoded into `Event`s a person can read.
//!
//! Why this exists: the probes write fixed-size C records; operators need
//! "pid 4312 (python3) denied syscall ptrace (101): killed". Decoding lives
//! in one place so `exec`, the daemon's logs and `status` say the same thing.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::loader::abi::{self, RawEvent};
use crate::ruleset::{Arch, Mode};

/// What a confined process did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A syscall not in the allowlist (or from the ia32/x32 tables).
    DeniedSyscall {
        number: i64,
        name: Option<&'static str>,
        compat: bool,
    },
    /// A connect or sendmsg to a destination not in the egress allowlist.
    DeniedConnect { destination: SocketAddr },
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
            EventKind::DeniedConnect { .. } => "denied_connect",
            EventKind::Exec { .. } => "exec",
            EventKind::Exit => "exit",
        }
    }

    /// The syscall name for a denied syscall (`#N` when unknown).
    pub fn syscall(&self) -> Option<String> {
        match &self.kind {
            EventKind::DeniedSyscall {
                number,
                name,
                compat,
            } => Some(match (name, compat) {
                (_, true) => format!("compat#{number}"),
                (Some(name), false) => (*name).to_owned(),
                (None, false) => format!("#{number}"),
            }),
            _ => None,
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
            EventKind::DeniedSyscall { number, compat, .. } => {
                let name = self.syscall().unwrap_or_default();
                let table = if *compat {
                    " from the ia32/x32 table"
                } else {
                    ""
                };
                write!(
                    f,
                    "{who} denied syscall {name} ({number}){table}: {}",
                    outcome("killed")
                )
            }
            EventKind::DeniedConnect { destination } => {
                write!(
                    f,
                    "{who} denied connect to {destination}: {}",
                    outcome("refused with EPERM")
                )
            }
            EventKind::Exec { path } => write!(f, "{who} exec {path}"),
            EventKind::Exit => write!(f, "process {} ({}) exited", self.tgid, self.comm),
        }
    }
}

impl Event {
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
            EventKind::DeniedSyscall { .. } => {
                tracing::warn!(
                    aa_event,
                    pid,
                    comm,
                    syscall = self.syscall().as_deref(),
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

/// Logs every event, up to `per_second` a second; beyond that, counts them
/// and logs how many were suppressed once the flood's second is over,
/// together with how many the kernel dropped (ring buffer full).
pub struct RateLimitedLog {
    per_second: u32,
    window_start: std::time::Instant,
    logged: u32,
    suppressed: u64,
    kernel_drops: u64,
}

impl RateLimitedLog {
    pub fn new(per_second: u32) -> Self {
        RateLimitedLog {
            per_second,
            window_start: std::time::Instant::now(),
            logged: 0,
            suppressed: 0,
            kernel_drops: 0,
        }
    }

    pub fn log(&mut self, event: &Event) {
        if self.logged < self.per_second {
            self.logged += 1;
            event.log();
        } else {
            self.suppressed += 1;
        }
    }

    /// Ends the current second if it is over, reporting what was
    /// suppressed and any new kernel drops (`kernel_drops` is the probes'
    /// running total, when known).
    pub fn roll_window(&mut self, kernel_drops: Option<u64>) {
        if self.window_start.elapsed() < std::time::Duration::from_secs(1) {
            return;
        }
        let new_drops = kernel_drops.map_or(0, |total| total.saturating_sub(self.kernel_drops));
        if let Some(total) = kernel_drops {
            self.kernel_drops = total;
        }
        if self.suppressed > 0 || new_drops > 0 {
            tracing::warn!(
                aa_event = "suppressed",
                suppressed = self.suppressed,
                drops = new_drops,
                "event flood: {} events not logged in the last second, {new_drops} lost in the kernel ring buffer ({} lost in total)",
                self.suppressed,
                self.kernel_drops
            );
        }
        self.window_start = std::time::Instant::now();
        self.logged = 0;
        self.suppressed = 0;
    }
}
