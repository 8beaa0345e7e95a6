//! DNS-aware egress against the real kernel and the real resolver
//! libraries: host names in `network.allowlist` become reachable addresses
//! only through the daemon's resolver, in a network namespace of the test's
//! own with a fake upstream server (`support::netns`).
//!
//! Each test runs a confined Python (`tests/helpers/resolve_connect.py`) and
//! `getent` that resolve through glibc exactly as an agent would, and checks
//! what connects: allowed names and the ends of their CNAME chains do, other
//! names do not resolve and their addresses are EPERM, a query aimed at
//! another server is answered by the resolver too, addresses stop working
//! after their TTL, a reload that drops a name revokes its addresses before
//! it reports `applied`, and unconfined processes never meet the resolver.

mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::daemon::Daemon;
use support::netns::{LOCAL_STUB, NetNs, Record, UPSTREAM, Zone};
use support::{default_policy_text, unique_pin_dir};

const EPERM: i64 = 1;

fn zone() -> Zone {
    let mut zone = Zone::default();
    let names = &mut zone.names;
    names.insert(
        "api.svc.test",
        vec![
            Record::A("198.18.1.1", 300),
            Record::Aaaa("2001:db8::11", 300),
        ],
    );
    names.insert("svc.test", vec![Record::A("198.18.1.9", 300)]);
    names.insert("blocked.test", vec![Record::A("198.18.1.2", 300)]);
    names.insert("alias.svc.test", vec![Record::Cname("edge.cdn.test")]);
    names.insert("edge.cdn.test", vec![Record::A("198.18.1.3", 300)]);
    names.insert("short.svc.test", vec![Record::A("198.18.1.4", 1)]);
    names.insert("big.svc.test", vec![Record::A("198.18.1.5", 300)]);
    names.insert("removed.test", vec![Record::A("198.18.1.6", 300)]);
    names.insert("keep.test", vec![Record::A("198.18.1.7", 300)]);
    names.insert("slow.svc.test", vec![Record::A("198.18.1.8", 300)]);
    zone.tcp_only.push("big.svc.test");
    zone.slow.push("slow.svc.test");
    zone
}

/// The default policy with `hosts` added to its egress allowlist.
fn policy_with_hosts(hosts: &[&str]) -> String {
    let text = default_policy_text();
    let list = "      - \"::1\"\n";
    assert!(text.contains(list), "the default allowlist ends with ::1");
    let added: String = hosts.iter().map(|h| format!("      - \"{h}\"\n")).collect();
    text.replacen(list, &format!("{list}{added}"), 1)
}

fn helper() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/helpers/resolve_connect.py")
        .display()
        .to_string()
}

/// One JSON line per step.
fn parse_steps(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// `argv`, to run confined by `daemon` (`exec` through it) inside `netns`.
fn confined(netns: &NetNs, daemon: &Daemon, argv: &[&str]) -> Command {
    let mut command = netns.command(env!("CARGO_BIN_EXE_aa-policyd"));
    command
        .arg("exec")
        .arg("--socket")
        .arg(&daemon.socket)
        .arg("--")
        .args(argv);
    command
}

/// The helper with `steps`, to run confined by `daemon` inside `netns`.
fn confined_command(netns: &NetNs, daemon: &Daemon, steps: &[&str]) -> Command {
    let mut command = confined(netns, daemon, &["python3", &helper()]);
    command.args(steps);
    command
}

/// Runs the helper's `steps` confined by `daemon`, inside `netns`.
fn confined_steps(netns: &NetNs, daemon: &Daemon, steps: &[&str]) -> Vec<Value> {
    let out = confined_command(netns, daemon, steps)
        .output()
        .expect("run the confined helper");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "confined helper failed ({:?}): {stdout}{}\ndaemon log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        daemon.log()
    );
    parse_steps(&stdout)
}

/// A confined helper the test talks to while it runs (its `wait` steps
/// read the test's go-ahead): the child, its stdin, and its steps' results.
fn confined_interactive(
    netns: &NetNs,
    daemon: &Daemon,
    steps: &[&str],
) -> (
    std::process::Child,
    std::process::ChildStdin,
    impl Iterator<Item = Value> + use<>,
) {
    let mut child = confined_command(netns, daemon, steps)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the confined helper");
    let stdin = child.stdin.take().expect("stdin");
    let stdout = child.stdout.take().expect("stdout");
    let results = std::io::BufRead::lines(std::io::BufReader::new(stdout))
        .map_while(Result::ok)
        .map(|line| serde_json::from_str(&line).unwrap_or(Value::Null));
    (child, stdin, results)
}

fn start_daemon(name: &str, netns: &NetNs, hosts: &[&str], min_ttl: &str) -> Option<Daemon> {
    let upstream = format!("{UPSTREAM}:53");
    let launcher = netns.nsenter();
    let launcher: Vec<&str> = launcher.iter().map(String::as_str).collect();
    start_daemon_through(
        name,
        hosts,
        &["--dns-upstream", &upstream, "--dns-min-ttl", min_ttl],
        &launcher,
    )
}

fn start_daemon_through(
    name: &str,
    hosts: &[&str],
    args: &[&str],
    launcher: &[&str],
) -> Option<Daemon> {
    let policy = policy_with_hosts(hosts);
    Daemon::start_through(
        name,
        |etc| std::fs::write(etc.join("policy.yaml"), &policy).expect("write policy"),
        args,
        launcher,
    )
}

fn connect_result<'a>(step: &'a Value, addr: &str) -> &'a Value {
    &step["addrs"][addr]
}

#[test]
fn allowed_names_resolve_and_connect_and_nothing_else_does() {
    if !support::kernel_available("dns_allowed_names") {
        return;
    }
    let netns = NetNs::create("dns", zone());
    let Some(daemon) = start_daemon(
        "dns_allowed_names",
        &netns,
        &["*.svc.test", "keep.test"],
        "30",
    ) else {
        return;
    };
    let steps = confined_steps(
        &netns,
        &daemon,
        &[
            "resolve:api.svc.test",
            "resolve:API.Svc.Test",
            "resolve:svc.test",
            "resolve:blocked.test",
            "connect:198.18.1.2",
            "connect:198.18.1.9",
            "resolve:alias.svc.test",
            "resolve:big.svc.test",
            "resolve:missing.svc.test",
            "raw:192.0.2.53:api.svc.test",
            "raw:192.0.2.53:blocked.test",
            "raw6:198.18.0.53:api.svc.test",
            "bound:lo:127.0.0.53:blocked.test",
            "bound:lo:198.18.0.53:blocked.test",
            "raw:127.0.0.53:blocked.test",
            // Connections held open do not lock others out of TCP: the
            // oldest is closed for a new one.
            "hold:198.18.0.53:600",
            "resolve:big.svc.test",
        ],
    );
    let log = daemon.log();
    let context = format!("{steps:#?}\ndaemon log:\n{log}");
    assert_eq!(steps.len(), 17, "{context}");
    // An allowed name: both families connect.
    assert_eq!(connect_result(&steps[0], "198.18.1.1"), "ok", "{context}");
    assert_eq!(connect_result(&steps[0], "2001:db8::11"), "ok", "{context}");
    assert_eq!(
        connect_result(&steps[1], "198.18.1.1"),
        "ok",
        "case-insensitive: {context}"
    );
    // `*.svc.test` needs one more label; unlisted names do not resolve.
    assert!(
        steps[2]["error"].is_string(),
        "svc.test resolved: {context}"
    );
    assert!(
        steps[3]["error"].is_string(),
        "blocked.test resolved: {context}"
    );
    assert_eq!(
        steps[4]["connect"], EPERM,
        "direct connect to a refused name's address: {context}"
    );
    assert_eq!(steps[5]["connect"], EPERM, "{context}");
    // A CNAME to an unlisted name is followed and its address allowed.
    assert_eq!(connect_result(&steps[6], "198.18.1.3"), "ok", "{context}");
    // A truncated UDP answer sends glibc to TCP, which is redirected too.
    assert_eq!(connect_result(&steps[7], "198.18.1.5"), "ok", "{context}");
    assert!(
        netns
            .queries_for("big.svc.test")
            .iter()
            .any(|q| q.ends_with("/tcp")),
        "the upstream saw no TCP query: {:?}",
        netns.queries_for("big.svc.test")
    );
    assert!(
        steps[8]["error"].is_string(),
        "NXDOMAIN resolved: {context}"
    );
    // Straight to another server: answered by the resolver, shown as from
    // the server asked.
    assert_eq!(steps[9]["from"], "192.0.2.53", "{context}");
    assert_eq!(steps[9]["id_matches"], true, "{context}");
    assert_eq!(steps[9]["rcode"], 0, "{context}");
    assert_eq!(steps[9]["answers"], 1, "{context}");
    assert_eq!(steps[10]["rcode"], 5, "REFUSED expected: {context}");
    // An AF_INET6 socket asking a v4-mapped server sends through the IPv4
    // hooks and receives through the IPv6 ones: still shown as that server.
    assert_eq!(steps[11]["from"], "::ffff:198.18.0.53", "{context}");
    assert_eq!(steps[11]["answers"], 1, "{context}");
    // A device-bound socket cannot be redirected: its DNS is refused, even
    // to a stub inside the allowed 127.0.0.0/8, instead of reaching a
    // server that answers every name.
    assert_eq!(steps[12]["errno"], EPERM, "{context}");
    assert_eq!(steps[13]["errno"], EPERM, "{context}");
    // Without the device binding, the stub's address is redirected too.
    assert_eq!(steps[14]["rcode"], 5, "{context}");
    assert_eq!(steps[14]["from"], "127.0.0.53", "{context}");
    assert_eq!(steps[15]["held"], 600, "{context}");
    assert_eq!(connect_result(&steps[16], "198.18.1.5"), "ok", "{context}");
    // Refused names never reached the upstream.
    assert!(netns.queries_for("blocked.test").is_empty(), "{context}");
    assert!(netns.queries_for("svc.test").is_empty(), "{context}");

    // getent (glibc's NSS path, gethostbyname2 etc.).
    let getent = |name: &str| {
        confined(&netns, &daemon, &["getent", "ahostsv4", name])
            .output()
            .expect("getent")
    };
    let allowed = getent("api.svc.test");
    assert!(
        String::from_utf8_lossy(&allowed.stdout).contains("198.18.1.1"),
        "getent: {allowed:?}"
    );
    let refused = getent("blocked.test");
    assert_eq!(
        refused.status.code(),
        Some(2),
        "getent of a refused name: {refused:?}"
    );

    let status = daemon.status();
    assert!(
        status.learned_addresses >= 4,
        "learned: {}",
        status.learned_addresses
    );
    assert!(status.denials.dns >= 3, "dns denials: {:?}", status.denials);
    assert!(log.contains("denied DNS query for blocked.test"), "{log}");

    // Unconfined processes in the same namespace use the upstream directly:
    // a name the policy refuses resolves and connects, and nothing is learned.
    let before = daemon.status().learned_addresses;
    let out = Command::new("ip")
        .args(["netns", "exec", &netns.name, "python3"])
        .arg(helper())
        .args(["resolve:blocked.test", "raw:198.18.0.53:blocked.test"])
        .output()
        .expect("unconfined helper");
    let steps = parse_steps(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        connect_result(&steps[0], "198.18.1.2"),
        "ok",
        "{steps:?} {out:?}"
    );
    assert_eq!(steps[1]["rcode"], 0, "{steps:?}");
    assert_eq!(steps[1]["from"], UPSTREAM, "{steps:?}");
    assert_eq!(daemon.status().learned_addresses, before);
    drop(daemon);
}

#[test]
fn answered_addresses_expire_after_their_ttl() {
    if !support::kernel_available("dns_ttl") {
        return;
    }
    let netns = NetNs::create("dnsttl", zone());
    let Some(daemon) = start_daemon("dns_ttl", &netns, &["*.svc.test"], "1") else {
        return;
    };
    // short.svc.test has TTL 1 s, and the floor is 1 s here: the address
    // connects right after the answer, not 3 s later, and again once
    // resolved again.
    let steps = confined_steps(
        &netns,
        &daemon,
        &[
            "resolve:short.svc.test",
            "sleep:3",
            "connect:198.18.1.4",
            "resolve:short.svc.test",
        ],
    );
    let context = format!("{steps:#?}\n{}", daemon.log());
    assert_eq!(connect_result(&steps[0], "198.18.1.4"), "ok", "{context}");
    assert_eq!(
        steps[2]["connect"], EPERM,
        "expired address still connects: {context}"
    );
    assert_eq!(connect_result(&steps[3], "198.18.1.4"), "ok", "{context}");
    // The sweeper removes it from the map too.
    assert!(
        support::eventually(|| {
            std::thread::sleep(Duration::from_millis(200));
            daemon.status().learned_addresses == 0
        }),
        "learned addresses never expired: {}",
        daemon.status().learned_addresses
    );
}

#[test]
fn a_reload_that_drops_a_host_revokes_its_addresses_before_it_reports_applied() {
    if !support::kernel_available("dns_reload") {
        return;
    }
    let netns = NetNs::create("dnsreload", zone());
    let Some(mut daemon) = start_daemon("dns_reload", &netns, &["removed.test", "keep.test"], "30")
    else {
        return;
    };
    let (mut child, mut stdin, mut results) = confined_interactive(
        &netns,
        &daemon,
        &[
            "resolve:removed.test",
            "resolve:keep.test",
            "wait",
            "connect:198.18.1.6",
            "connect:198.18.1.7",
            "resolve:removed.test",
        ],
    );
    let first: Vec<Value> = results.by_ref().take(2).collect();
    assert_eq!(first.len(), 2, "{first:?}\n{}", daemon.log());
    assert_eq!(connect_result(&first[0], "198.18.1.6"), "ok", "{first:?}");
    assert_eq!(connect_result(&first[1], "198.18.1.7"), "ok", "{first:?}");
    let learned = daemon.status().learned_addresses;
    assert_eq!(learned, 2, "{first:?}");

    let generation = daemon.status().generation;
    let text = policy_with_hosts(&["keep.test"]);
    std::fs::write(&daemon.policy, text).expect("save the policy in place");
    let status = daemon.wait_for("the reload", |s| s.generation > generation);
    let reload = status.last_reload.expect("a reload");
    assert_eq!(reload.outcome.as_str(), "applied", "{reload:?}");
    assert_eq!(
        status.learned_addresses, 1,
        "the unrelated address survives"
    );

    writeln!(stdin, "go").expect("go-ahead");
    let rest: Vec<Value> = results.collect();
    let _ = child.wait();
    let context = format!("{rest:#?}\n{}", daemon.log());
    assert_eq!(rest.len(), 4, "{context}");
    assert_eq!(
        rest[1]["connect"], EPERM,
        "a dropped host's address still connects: {context}"
    );
    assert_eq!(
        rest[2]["connect"], "ok",
        "an unrelated learned address was flushed: {context}"
    );
    assert!(
        rest[3]["error"].is_string(),
        "a dropped host still resolves: {context}"
    );

    // kill -9 and a restart: the new daemon cannot know which rules justified
    // what the old one learned, so it starts with nothing learned.
    daemon.restart(&[]);
    assert_eq!(daemon.status().learned_addresses, 0);
    let steps = confined_steps(
        &netns,
        &daemon,
        &["connect:198.18.1.7", "resolve:keep.test"],
    );
    let context = format!("{steps:#?}\n{}", daemon.log());
    assert_eq!(
        steps[0]["connect"], EPERM,
        "learned before the restart: {context}"
    );
    assert_eq!(connect_result(&steps[1], "198.18.1.7"), "ok", "{context}");
}

#[test]
fn a_dns_socket_connected_before_host_rules_cannot_bypass_the_resolver() {
    if !support::kernel_available("dns_connected_before") {
        return;
    }
    let netns = NetNs::create("dnsconn", zone());
    // No host names yet: the loopback stub is an allowed destination.
    let Some(daemon) = start_daemon("dns_connected_before", &netns, &[], "30") else {
        return;
    };
    let connect = format!("udpconn:{LOCAL_STUB}");
    let (mut child, mut stdin, mut results) = confined_interactive(
        &netns,
        &daemon,
        &[
            &connect,
            "udpsend:blocked.test",
            "wait",
            "udpsend:blocked.test",
        ],
    );
    let mut next = || results.next().unwrap_or(Value::Null);
    assert_eq!(next()["connected"], LOCAL_STUB);
    assert_eq!(next()["rcode"], 0, "before host rules, the stub answers");

    let generation = daemon.status().generation;
    std::fs::write(&daemon.policy, policy_with_hosts(&["*.svc.test"])).expect("save");
    let status = daemon.wait_for("the reload", |s| s.generation > generation);
    assert_eq!(
        status.last_reload.expect("reload").outcome.as_str(),
        "applied"
    );
    writeln!(stdin, "go").expect("go-ahead");
    assert_eq!(next()["waited"], true);
    let after = next();
    let _ = child.wait();
    assert_eq!(
        after["errno"],
        EPERM,
        "the connected socket still reaches the stub: {after}\n{}",
        daemon.log()
    );
    assert!(
        daemon.log().contains("bypassed the resolver"),
        "{}",
        daemon.log()
    );
}

/// `n0.many.test` ... `n{names-1}.many.test`, each answering `per_name`
/// addresses in 198.19.0.0/16 (no listeners).
fn many_names(zone: &mut Zone, names: u32, per_name: u32) {
    for i in 0..names {
        let name: &'static str = Box::leak(format!("n{i}.many.test").into_boxed_str());
        let records = (0..per_name)
            .map(|j| {
                let addr = format!(
                    "198.19.{}.{}",
                    (i * per_name + j) / 256,
                    (i * per_name + j) % 256
                );
                Record::A(Box::leak(addr.into_boxed_str()), 300)
            })
            .collect();
        zone.names.insert(name, records);
    }
}

#[test]
fn one_host_rule_cannot_fill_the_learned_maps_for_the_others() {
    if !support::kernel_available("dns_capacity") {
        return;
    }
    let mut zone = zone();
    // 130 names of 64 addresses: more than one rule may hold (8,192).
    many_names(&mut zone, 130, 64);
    zone.names.insert(
        "wide.svc.test",
        (0..100)
            .map(|j| Record::A(Box::leak(format!("198.19.200.{j}").into_boxed_str()), 300))
            .collect(),
    );
    let netns = NetNs::create("dnscap", zone);
    let Some(daemon) = start_daemon("dns_capacity", &netns, &["*.many.test", "*.svc.test"], "30")
    else {
        return;
    };
    let mut steps: Vec<String> = (0..130)
        .map(|i| format!("raw:{UPSTREAM}:n{i}.many.test"))
        .collect();
    steps.push(format!("raw:{UPSTREAM}:wide.svc.test"));
    steps.push("resolve:api.svc.test".to_owned());
    let steps: Vec<&str> = steps.iter().map(String::as_str).collect();
    let results = confined_steps(&netns, &daemon, &steps);
    let context = daemon.log();
    let rcodes: Vec<i64> = results[..130]
        .iter()
        .map(|r| r["rcode"].as_i64().unwrap_or(-1))
        .collect();
    assert!(
        rcodes[..128].iter().all(|&r| r == 0),
        "{rcodes:?}\n{context}"
    );
    assert_eq!(
        &rcodes[128..],
        &[2, 2],
        "SERVFAIL past the rule's share: {context}"
    );
    // Another rule still learns, and only the first 64 addresses of an
    // answer count.
    assert_eq!(results[130]["rcode"], 0, "{context}");
    assert_eq!(
        connect_result(&results[131], "198.18.1.1"),
        "ok",
        "{context}"
    );
    let learned = daemon.status().learned_addresses;
    assert_eq!(learned, 8192 + 64 + 2, "{context}");
    assert!(
        context.contains("already allows 8192 addresses"),
        "{context}"
    );
}

#[test]
fn one_client_socket_cannot_take_every_query_slot() {
    if !support::kernel_available("dns_slots") {
        return;
    }
    let netns = NetNs::create("dnsslots", zone());
    let Some(daemon) = start_daemon("dns_slots", &netns, &["*.svc.test"], "30") else {
        return;
    };
    // 40 queries the upstream holds for a second, from one socket: 16 are
    // taken, the rest dropped; another socket's query meanwhile is answered
    // at once, before any of them.
    let steps = confined_steps(
        &netns,
        &daemon,
        &[&format!("flood:{UPSTREAM}:slow.svc.test:40:api.svc.test")],
    );
    let context = format!("{steps:#?}\n{}", daemon.log());
    assert_eq!(steps[0]["answered"], 16, "{context}");
    assert_eq!(steps[0]["other_rcode"], 0, "{context}");
    assert_eq!(steps[0]["other_first"], true, "{context}");
}

#[test]
fn without_an_upstream_the_resolver_follows_resolv_conf_as_it_changes() {
    if !support::kernel_available("dns_resolv_conf") {
        return;
    }
    let netns = NetNs::create("dnsresolv", zone());
    // The daemon sees a resolv.conf of the test's own (bound over
    // /etc/resolv.conf in a mount namespace of its own), naming a server
    // that does not exist.
    let dir = tempfile::tempdir().expect("temp dir");
    let resolv_conf = dir.path().join("resolv.conf");
    std::fs::write(&resolv_conf, "nameserver 198.18.0.99\n").expect("write resolv.conf");
    let net = format!("--net={}", netns.path.display());
    let bind = format!("mount --bind \"$0\" /etc/resolv.conf && exec nsenter {net} \"$@\"");
    let resolv_conf_arg = resolv_conf.display().to_string();
    let launcher = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &bind,
        &resolv_conf_arg,
    ];
    let Some(daemon) = start_daemon_through("dns_resolv_conf", &["*.svc.test"], &[], &launcher)
    else {
        return;
    };
    let query = format!("raw:{UPSTREAM}:api.svc.test");
    let steps = confined_steps(&netns, &daemon, &[&query]);
    assert_eq!(
        steps[0]["rcode"],
        2,
        "SERVFAIL: {steps:?}\n{}",
        daemon.log()
    );
    // Rewritten in place, as a network manager would.
    std::fs::write(&resolv_conf, format!("nameserver {UPSTREAM}\n")).expect("rewrite");
    let steps = confined_steps(&netns, &daemon, &[&query]);
    assert_eq!(steps[0]["rcode"], 0, "{steps:?}\n{}", daemon.log());
    assert_eq!(steps[0]["answers"], 1, "{steps:?}");
}

#[test]
fn standalone_exec_runs_its_own_resolver() {
    if !support::kernel_available("dns_standalone") {
        return;
    }
    let netns = NetNs::create("dnsexec", zone());
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, policy_with_hosts(&["api.svc.test"])).expect("write policy");
    let pin_dir = unique_pin_dir("dns_standalone");
    let out = netns
        .command(env!("CARGO_BIN_EXE_aa-policyd"))
        .arg("exec")
        .arg("--policy")
        .arg(&policy)
        .arg("--pin-dir")
        .arg(&pin_dir)
        .args(["--dns-upstream", UPSTREAM])
        .arg("--")
        .arg("python3")
        .arg(helper())
        .args([
            "resolve:api.svc.test",
            "resolve:blocked.test",
            "connect:198.18.1.2",
        ])
        .output()
        .expect("run exec --policy");
    let _ = aa_policyd::loader::kernel::unload(&pin_dir);
    let steps = parse_steps(&String::from_utf8_lossy(&out.stdout));
    let context = format!("{steps:#?}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(steps.len(), 3, "{context}");
    assert_eq!(connect_result(&steps[0], "198.18.1.1"), "ok", "{context}");
    assert!(steps[1]["error"].is_string(), "{context}");
    assert_eq!(steps[2]["connect"], EPERM, "{context}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("denied DNS query for blocked.test"),
        "{context}"
    );
}
