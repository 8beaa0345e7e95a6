//! Subcommands and their shared exit-code contract.
//!
//! Exit codes are part of the interface scripts depend on: 0 success, 1 an
//! invalid policy or failed operation, 2 a usage error (clap), 3 a change the
//! safety guard refuses.

mod check;
mod confine;
mod diff;
mod docs;
mod events;
mod exec;
mod run;
mod status;
mod unload;
mod watch;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use aa_policyd::control::DEFAULT_SOCKET;
use aa_policyd::daemon::RunOptions;
use aa_policyd::loader::kernel::DEFAULT_PIN_DIR;
use aa_policyd::ruleset::Arch;
use clap::{Parser, Subcommand};

pub const EXIT_INVALID: u8 = 1;
pub const EXIT_REFUSED: u8 = 3;

#[derive(Debug, Parser)]
#[command(
    name = "aa-policyd",
    version,
    about = "Confine AI agents with eBPF; change their rules live from a policy YAML",
    long_about = None,
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a policy and show what it lowers to (exit 0 valid, 1 invalid).
    Check {
        /// Print the lowered rule set as JSON (schema in the README).
        #[arg(long)]
        json: bool,
        /// Syscall table to lower against (default: this machine's).
        #[arg(long, value_parser = parse_arch, default_value_t = Arch::native())]
        arch: Arch,
        /// The policy file.
        policy: PathBuf,
    },
    /// Show the text and rule-level change between two policies
    /// (exit 0 applicable, 3 refused by the safety guard, 1 invalid).
    Diff {
        /// Print the change as JSON.
        #[arg(long)]
        json: bool,
        /// Assume this many processes are confined when checking the guard.
        #[arg(long, default_value_t = 0)]
        confined: usize,
        /// Syscall table to lower against (default: this machine's).
        #[arg(long, value_parser = parse_arch, default_value_t = Arch::native())]
        arch: Arch,
        /// The policy in force.
        old: PathBuf,
        /// The proposed policy.
        new: PathBuf,
    },
    /// Run CMD confined; exits with CMD's status (128 + signal when
    /// killed). With --policy: standalone (loads the probes itself, events on
    /// stderr). Without: through the running daemon, under its policy.
    Exec {
        /// Enforce this policy standalone instead of asking the daemon.
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Where the probes' maps and links are pinned (standalone).
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// The daemon's control socket.
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        #[command(flatten)]
        dns: DnsArgs,
        /// The command and its arguments.
        #[arg(last = true, required = true, num_args = 1..)]
        command: Vec<OsString>,
    },
    /// The daemon: enforce POLICY, apply every valid save of it, serve the
    /// control socket. SIGHUP reloads; SIGTERM stops (enforcement stays
    /// pinned while processes are confined).
    Run {
        /// The policy file to enforce and watch.
        #[arg(long, default_value = "/etc/agent-assembly/policy.yaml")]
        policy: PathBuf,
        /// The control socket.
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Where the probes' maps and links are pinned.
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// Do not watch the file (a remote `aa-policyd watch` sends changes).
        #[arg(long)]
        no_watch: bool,
        /// Seconds between the safety-net hash checks of the policy file.
        #[arg(long, default_value_t = 60)]
        check_interval: u64,
        #[command(flatten)]
        dns: DnsArgs,
    },
    /// Watch POLICY and send its changes to a daemon started with --no-watch
    /// (needs no BPF privileges, only access to the socket).
    Watch {
        /// The policy file to watch.
        #[arg(long, default_value = "/etc/agent-assembly/policy.yaml")]
        policy: PathBuf,
        /// The daemon's control socket.
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Seconds between the safety-net hash checks of the policy file.
        #[arg(long, default_value_t = 60)]
        check_interval: u64,
    },
    /// Show what the daemon enforces, who is confined, and the last reload.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// The daemon's control socket.
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Follow the daemon's probe events (denials, execs, exits) until
    /// interrupted.
    Events {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// The daemon's control socket.
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Confine a running process (all its threads) and its future children.
    Confine {
        /// The process id.
        pid: u32,
        /// The daemon's control socket.
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Release a confined process (children it already has stay confined).
    Release {
        /// The process id.
        pid: u32,
        /// The daemon's control socket.
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Write the man page and shell completions into DIR (for packaging).
    #[command(hide = true)]
    GenerateDocs {
        /// Output directory.
        dir: PathBuf,
    },
    /// Remove every program, link, map and pin aa-policyd created under
    /// the pin dir (stops enforcement for everything confined through it).
    Unload {
        /// Where the probes' maps and links are pinned.
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
}

impl Cli {
    /// Whether a closed stdout (`aa-policyd status | head`) should end the
    /// process quietly, as it does for other Unix tools. Only for commands
    /// that print and exit: the daemon, the watcher and `exec` keep SIGPIPE
    /// ignored, so a client that hangs up is an error to handle, not death.
    pub fn quiet_on_closed_stdout(&self) -> bool {
        !matches!(
            self.command,
            Command::Run { .. } | Command::Watch { .. } | Command::Exec { .. }
        )
    }
}

/// DNS-aware egress (host names in `network.allowlist`).
#[derive(clap::Args, Debug)]
struct DnsArgs {
    /// Where the resolver for confined processes forwards the names the
    /// policy allows: IP, IP:PORT or [IPv6]:PORT, tried in order
    /// (repeatable). Default: the nameservers of /etc/resolv.conf.
    #[arg(long = "dns-upstream", value_name = "IP[:PORT]", value_parser = aa_policyd::dns::parse_upstream)]
    dns_upstream: Vec<std::net::SocketAddr>,
    /// An answered address stays allowed for its TTL, but at least this
    /// many seconds (clients such as the JVM reuse answers for 30 s) and
    /// at most a day.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    dns_min_ttl: u64,
}

impl DnsArgs {
    fn options(&self) -> aa_policyd::dns::DnsOptions {
        aa_policyd::dns::DnsOptions {
            upstreams: self.dns_upstream.clone(),
            min_ttl: Duration::from_secs(self.dns_min_ttl),
        }
    }
}

fn parse_arch(raw: &str) -> Result<Arch, String> {
    raw.parse()
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check { json, arch, policy } => Ok(check::run(&policy, arch, json)),
        Command::Diff {
            json,
            confined,
            arch,
            old,
            new,
        } => diff::run(&old, &new, arch, confined, json),
        Command::Exec {
            policy: Some(policy),
            pin_dir,
            dns,
            command,
            ..
        } => exec::run(&policy, &pin_dir, &dns.options(), &command),
        Command::Exec {
            policy: None,
            socket,
            command,
            ..
        } => exec::through_daemon(&socket, &command),
        Command::Unload { pin_dir } => unload::run(&pin_dir),
        Command::GenerateDocs { dir } => docs::run(&dir),
        Command::Run {
            policy,
            socket,
            pin_dir,
            no_watch,
            check_interval,
            dns,
        } => run::run(&RunOptions {
            policy,
            socket,
            pin_dir,
            watch: !no_watch,
            periodic_check: Duration::from_secs(check_interval.max(1)),
            dns: dns.options(),
        }),
        Command::Watch {
            policy,
            socket,
            check_interval,
        } => watch::run(&policy, &socket, Duration::from_secs(check_interval.max(1))),
        Command::Status { json, socket } => status::run(&socket, json),
        Command::Events { json, socket } => events::run(&socket, json),
        Command::Confine { pid, socket } => confine::confine(&socket, pid),
        Command::Release { pid, socket } => confine::release(&socket, pid),
    }
}
