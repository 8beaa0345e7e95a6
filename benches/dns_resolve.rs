//! What DNS-aware egress costs a confined process's name lookups (root
//! only): resolve latency through the redirect to the daemon's resolver
//! versus straight to the same upstream, in one run, in a network namespace
//! of the bench's own with the tests' fake upstream and daemon harness
//! (`tests/support`).
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

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::Command;

use support::daemon::Daemon;
use support::netns::{NetNs, Record, UPSTREAM, Zone};

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
    run();
}

/// Latencies (µs) of one client run: confined through `daemon`, or straight
/// (the unconfined getaddrinfo through `ip netns exec`, which puts the
/// namespace's own resolv.conf, the fake upstream, in place).
fn measure(netns: &NetNs, daemon: Option<&Daemon>, kind: &str) -> Vec<f64> {
    let mut command = match daemon {
        Some(daemon) => {
            let mut command = netns.command(env!("CARGO_BIN_EXE_aa-policyd"));
            command
                .arg("exec")
                .arg("--socket")
                .arg(&daemon.socket)
                .args(["--", "python3"]);
            command
        }
        None if kind == "gai" => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", &netns.name, "python3"]);
            command
        }
        None => netns.command("python3"),
    };
    let out = command
        .args(["-c", CLIENT, kind, &QUERIES_PER_ROUND.to_string()])
        .output()
        .expect("run the client");
    assert!(
        out.status.success(),
        "client failed: {out:?}\ndaemon log:\n{}",
        daemon.map(Daemon::log).unwrap_or_default()
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.parse().ok())
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn run() {
    let mut zone = Zone::default();
    zone.names.insert(
        "api.svc.test",
        vec![
            Record::A("198.18.1.1", 300),
            Record::Aaaa("2001:db8::11", 300),
        ],
    );
    let netns = NetNs::create("bench", zone);
    let launcher = netns.nsenter();
    let launcher: Vec<&str> = launcher.iter().map(String::as_str).collect();
    let policy = support::default_policy_text().replacen(
        "      - \"::1\"\n",
        "      - \"::1\"\n      - \"*.svc.test\"\n",
        1,
    );
    let daemon = Daemon::start_through(
        "bench_dns",
        |etc| std::fs::write(etc.join("policy.yaml"), &policy).expect("write policy"),
        &["--dns-upstream", UPSTREAM],
        &launcher,
    )
    .expect("the daemon (root)");
    let before = daemon.status();
    let mut results: Vec<(&str, bool, Vec<f64>)> = Vec::new();
    for kind in ["raw", "gai"] {
        for confined in [true, false] {
            results.push((kind, confined, Vec::new()));
        }
    }
    for _ in 0..ROUNDS {
        for (kind, confined, samples) in &mut results {
            samples.extend(measure(&netns, confined.then_some(&daemon), kind));
        }
    }
    let after = daemon.status();
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
