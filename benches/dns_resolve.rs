//! What DNS-aware egress costs a confined process's name lookups (root
//! only): resolve latency through the redirect to the daemon's resolver
//! versus straight to the same upstream, in one run, in a network namespace
//! of the bench's own with the tests' fake upstream (`tests/support/netns.rs`).
//!
//! Two clients, each measured confined (through `aa-policyd exec`, so the
//! probes redirect every query) and unconfined (same namespace, same
//! upstream, no redirect), interleaved in rounds so drift hits both alike:
//!
//! - raw: one A query over UDP, answer read (the resolver's own cost: parse,
//!   policy match, forward, learn, reply);
//! - getaddrinfo: Python's `socket.getaddrinfo` through glibc (A and AAAA).
//!
//! It also reports the kernel map writes per answer, from the daemon's
//! status counters. Run: `sudo cargo bench --bench dns_resolve`.

#[path = "../tests/support/netns.rs"]
mod netns;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aa_policyd::control::client::Client;
use aa_policyd::control::wire::{Request, Response, StatusReport};
use aa_policyd::loader::kernel;
use netns::{NetNs, Record, UPSTREAM, Zone};

const DAEMON: &str = env!("CARGO_BIN_EXE_aa-policyd");
const QUERIES_PER_ROUND: usize = 500;
const ROUNDS: usize = 4;

/// Times `count` lookups of `kind` (raw or gai) and prints one latency per
/// line, in microseconds.
const CLIENT: &str = r#"
import os, socket, struct, sys, time
kind, count = sys.argv[1], int(sys.argv[2])
def raw():
    q = struct.pack(">HHHHHH", int.from_bytes(os.urandom(2), "big"), 0x0100, 1, 0, 0, 0)
    q += b"\x03api\x03svc\x04test\x00" + struct.pack(">HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.sendto(q, ("198.18.0.53", 53))
    s.recvfrom(4096)
    s.close()
def gai():
    socket.getaddrinfo("api.svc.test", 443, type=socket.SOCK_STREAM)
run = raw if kind == "raw" else gai
run()
out = []
for _ in range(count):
    t = time.perf_counter_ns()
    run()
    out.append((time.perf_counter_ns() - t) / 1000)
print("\n".join("%.1f" % v for v in out))
"#;

fn main() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        println!("dns_resolve skipped: it needs root (sudo cargo bench --bench dns_resolve)");
        return;
    }
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/aa-bench-dns-{}", std::process::id()));
    let result = std::panic::catch_unwind(|| run(&pin_dir));
    if let Err(error) = kernel::unload(&pin_dir) {
        eprintln!("cleanup of {} failed: {error}", pin_dir.display());
    }
    if result.is_err() {
        std::process::exit(1);
    }
}

struct Daemon {
    child: Child,
    socket: PathBuf,
    dir: tempfile::TempDir,
}

impl Daemon {
    fn status(&self) -> Option<StatusReport> {
        let mut client = Client::connect(&self.socket).ok()?;
        match client.request(&Request::Status).ok()? {
            Response::Status(status) => Some(*status),
            _ => None,
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: signalling our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn start_daemon(netns: &NetNs, pin_dir: &std::path::Path) -> Daemon {
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = dir.path().join("policy.yaml");
    let python_prefix = std::fs::canonicalize(
        String::from_utf8_lossy(
            &Command::new("python3")
                .args(["-c", "import sys; print(sys.prefix)"])
                .output()
                .expect("python3")
                .stdout,
        )
        .trim(),
    )
    .expect("python prefix");
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/policies/default.yaml"
    ))
    .expect("default policy")
    .replacen(
        "/workspace, /home]",
        // The client's interpreter, and the cwd Python looks in first.
        &format!(
            "/workspace, /home, {}, {}]",
            python_prefix.display(),
            env!("CARGO_MANIFEST_DIR")
        ),
        1,
    )
    .replacen(
        "      - \"::1\"\n",
        "      - \"::1\"\n      - \"*.svc.test\"\n",
        1,
    );
    std::fs::write(&policy, text).expect("write policy");
    let socket = dir.path().join("policyd.sock");
    let child = Command::new("nsenter")
        .arg(format!("--net={}", netns.path.display()))
        .arg(DAEMON)
        .arg("run")
        .arg("--policy")
        .arg(&policy)
        .arg("--socket")
        .arg(&socket)
        .arg("--pin-dir")
        .arg(pin_dir)
        .args(["--dns-upstream", UPSTREAM])
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("daemon.log")).expect("daemon log"))
        .spawn()
        .expect("start the daemon");
    let daemon = Daemon { child, socket, dir };
    let deadline = Instant::now() + Duration::from_secs(20);
    while daemon.status().is_none() {
        assert!(Instant::now() < deadline, "the daemon never answered");
        std::thread::sleep(Duration::from_millis(50));
    }
    daemon
}

/// Latencies (µs) of one client run, confined through `daemon` or not.
fn measure(netns: &NetNs, daemon: Option<&Daemon>, kind: &str) -> Vec<f64> {
    let mut command = Command::new("nsenter");
    command.arg(format!("--net={}", netns.path.display()));
    if let Some(daemon) = daemon {
        command
            .arg(DAEMON)
            .arg("exec")
            .arg("--socket")
            .arg(&daemon.socket)
            .arg("--");
    }
    let out = command
        .arg(python())
        .args(["-c", CLIENT, kind, &QUERIES_PER_ROUND.to_string()])
        .output()
        .expect("run the client");
    assert!(
        out.status.success(),
        "client failed: {out:?}\ndaemon log:\n{}",
        daemon
            .and_then(|d| std::fs::read_to_string(d.dir.path().join("daemon.log")).ok())
            .unwrap_or_default()
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.parse().ok())
        .collect()
}

/// The interpreter itself (a pyenv shim is a script that would need more
/// of the file system allowed).
fn python() -> String {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn run(pin_dir: &std::path::Path) {
    let mut zone = Zone::default();
    zone.names.insert(
        "api.svc.test",
        vec![
            Record::A("198.18.1.1", 300),
            Record::Aaaa("2001:db8::11", 300),
        ],
    );
    let netns = NetNs::create("bench", zone);
    let daemon = start_daemon(&netns, pin_dir);
    let before = daemon.status().expect("status");
    let mut results: Vec<(&str, bool, Vec<f64>)> = Vec::new();
    for kind in ["raw", "gai"] {
        for confined in [true, false] {
            results.push((kind, confined, Vec::new()));
        }
    }
    for _ in 0..ROUNDS {
        for (kind, confined, samples) in &mut results {
            if *kind == "gai" && !*confined {
                samples.extend(measure_gai_unconfined(&netns));
            } else {
                samples.extend(measure(&netns, confined.then_some(&daemon), kind));
            }
        }
    }
    let after = daemon.status().expect("status");
    println!(
        "dns_resolve: {} lookups per row, {ROUNDS} interleaved rounds",
        QUERIES_PER_ROUND * ROUNDS
    );
    println!(
        "{:<28} {:>10} {:>10} {:>10}",
        "client", "p50 (µs)", "p99 (µs)", "mean (µs)"
    );
    let mut medians = std::collections::BTreeMap::new();
    for (kind, confined, samples) in &mut results {
        samples.sort_by(f64::total_cmp);
        let mean = samples.iter().sum::<f64>() / samples.len() as f64;
        let label = format!(
            "{} {}",
            if *kind == "raw" {
                "raw A query"
            } else {
                "getaddrinfo"
            },
            if *confined {
                "via resolver"
            } else {
                "straight"
            }
        );
        medians.insert((kind.to_string(), *confined), percentile(samples, 0.5));
        println!(
            "{label:<28} {:>10.1} {:>10.1} {:>10.1}",
            percentile(samples, 0.5),
            percentile(samples, 0.99),
            mean
        );
    }
    for kind in ["raw", "gai"] {
        let ratio = medians[&(kind.to_owned(), true)] / medians[&(kind.to_owned(), false)];
        println!("{kind}: p50 via resolver / straight = {ratio:.2}");
    }
    let answers = after.dns_answers - before.dns_answers;
    let writes = after.dns_map_writes - before.dns_map_writes;
    println!(
        "map writes per answer: {:.2} ({writes} writes for {answers} answers; each answer that extends an address's expiry rewrites it)",
        writes as f64 / answers.max(1) as f64
    );
}

/// Unconfined getaddrinfo reads /etc/resolv.conf, so it runs through
/// `ip netns exec`, which puts the namespace's own (the fake upstream) there.
fn measure_gai_unconfined(netns: &NetNs) -> Vec<f64> {
    let out = Command::new("ip")
        .args(["netns", "exec", &netns.name])
        .arg(python())
        .args(["-c", CLIENT, "gai"])
        .arg(QUERIES_PER_ROUND.to_string())
        .output()
        .expect("run the client");
    assert!(out.status.success(), "client failed: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.parse().ok())
        .collect()
}
