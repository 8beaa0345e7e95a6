//! `aa-policyd check` through the real binary: every malformed policy is
//! refused with exit 1 and one line naming the place; every shipped policy
//! passes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn check(path: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aa-policyd"))
        .arg("check")
        .args(extra)
        .arg(path)
        .output()
        .expect("run aa-policyd")
}

/// (case name, file content, fragment the single error line must contain —
/// the `line:col: key.path` of the place whenever there is one).
fn malformed_cases() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let text = |s: &str| s.as_bytes().to_vec();
    let mut cases = vec![
        (
            "broken flow mapping",
            text("syscalls: {allow: [read]\n"),
            ":2:1: syscalls: did not find expected ',' or '}', while parsing a flow mapping",
        ),
        (
            "unclosed quote",
            text("mode: \"enforce\n"),
            "2:1: mode: found unexpected end of stream",
        ),
        (
            "tab indentation",
            text("syscalls:\n\tallow: [read]\n"),
            ":2:1: ",
        ),
        (
            "root is a list",
            text("- a\n- b\n"),
            "1:1: invalid type: sequence",
        ),
        (
            "root is a scalar",
            text("hello\n"),
            "1:1: invalid type: string",
        ),
        (
            "unknown root key (flat)",
            text("sycalls: {allow: [read]}\n"),
            "1:1: sycalls: unknown key",
        ),
        (
            "rule-list schema (envelope)",
            text("apiVersion: v1\nkind: Policy\nspec:\n  rules: []\n"),
            "4:3: spec.rules: the rule-list schema (`rules:`) is not supported",
        ),
        (
            "unknown spec key",
            text("apiVersion: v1\nkind: Policy\nspec:\n  sycalls: {}\n"),
            "4:3: spec.sycalls: unknown key",
        ),
        (
            "unknown filesystem key",
            text("apiVersion: v1\nkind: Policy\nspec:\n  filesystem:\n    raed: {allow: []}\n"),
            "5:5: spec.filesystem.raed: unknown key",
        ),
        (
            "unknown read key",
            text("filesystem:\n  read: {alow: [/a]}\n"),
            "2:10: filesystem.read.alow: unknown key",
        ),
        (
            "unknown syscalls key",
            text("syscalls: {deny: [read]}\n"),
            "syscalls.deny: unknown key",
        ),
        (
            "unknown network key",
            text("network: {allow: [10.0.0.0/8]}\n"),
            "network.allow: unknown key",
        ),
        (
            "metadata in the flat form",
            text("metadata: {name: x}\n"),
            "1:1: metadata: unknown key here; metadata belongs to the envelope form",
        ),
        (
            "unknown tool key",
            text("tools:\n  x: {allowed: true}\n"),
            "tools.x.allowed: unknown key",
        ),
        (
            "unknown budget key",
            text("budget: {daily: 5}\n"),
            "budget.daily: unknown key",
        ),
        (
            "unknown schedule key",
            text("schedule: {active_hours: {start: '09:00', end: '10:00', tz: UTC}}\n"),
            "schedule.active_hours.tz: unknown key",
        ),
        (
            "unknown data key",
            text("data: {patterns: [x]}\n"),
            "data.patterns: unknown key",
        ),
        (
            "unknown capabilities key",
            text("capabilities: {permit: [file_read]}\n"),
            "capabilities.permit: unknown key",
        ),
        (
            "wrong kind",
            text("apiVersion: v1\nkind: Pollicy\nspec: {}\n"),
            "2:7: kind: unknown variant `Pollicy`",
        ),
        (
            "envelope without spec",
            text("apiVersion: v1\nkind: Policy\n"),
            "missing field `spec`",
        ),
        (
            "envelope whose spec is empty",
            text("apiVersion: v1\nkind: Policy\nspec:\n"),
            "spec: is empty; write the policy under spec:",
        ),
        (
            "unknown mode",
            text("mode: enforcing\n"),
            "1:7: mode: unknown variant `enforcing`",
        ),
        (
            "syscalls.allow is a string",
            text("syscalls: {allow: read}\n"),
            "syscalls.allow: invalid type: string",
        ),
        (
            "syscalls.allow is null",
            text("syscalls:\n  allow:\n"),
            "syscalls.allow: is null",
        ),
        (
            "section is null",
            text("filesystem:\n"),
            "filesystem: is null",
        ),
        (
            "unknown syscall",
            text("syscalls:\n  allow: [read, opnat]\n"),
            "2:17: syscalls.allow[1]: unknown syscall `opnat`",
        ),
        (
            "syscall number instead of name",
            text("syscalls:\n  allow: [42]\n"),
            "syscalls.allow[0]: invalid type: integer `42`, expected a syscall name",
        ),
        (
            "unknown group",
            text("syscalls:\n  allow: ['@fle-system']\n"),
            "did you mean `@file-system`",
        ),
        (
            "nested list in syscalls",
            text("syscalls:\n  allow: [[read]]\n"),
            "syscalls.allow[0]: invalid type: sequence",
        ),
        (
            "relative path",
            text("filesystem:\n  deny: [etc/passwd]\n"),
            "2:10: filesystem.deny[0]: path `etc/passwd` is relative",
        ),
        (
            "dot-dot path",
            text("filesystem:\n  write: {allow: [/workspace/../etc]}\n"),
            "filesystem.write.allow[0]: path `/workspace/../etc` contains `..`",
        ),
        (
            "NUL in path",
            text("filesystem:\n  deny: [\"/etc\\0x\"]\n"),
            "filesystem.deny[0]: path \"/etc\\0x\" contains a NUL byte",
        ),
        (
            "empty path",
            text("filesystem:\n  deny: ['']\n"),
            "filesystem.deny[0]: path is empty",
        ),
        (
            "path too long",
            format!("filesystem:\n  deny: [/{}]\n", "a".repeat(300)).into_bytes(),
            "filesystem.deny[0]: path is 301 bytes",
        ),
        (
            "bad CIDR prefix",
            text("network:\n  allowlist: [10.0.0.0/33]\n"),
            "network.allowlist[0]: prefix length /33",
        ),
        (
            "CIDR with host bits",
            text("network:\n  allowlist: [10.0.0.1/8]\n"),
            "did you mean 10.0.0.0/8",
        ),
        (
            "bad IPv4",
            text("network:\n  allowlist: [10.0.0.256]\n"),
            "network.allowlist[0]: `10.0.0.256` is not a valid IPv4",
        ),
        (
            "bad IPv6",
            text("network:\n  allowlist: ['[2001:db8::zz]:443']\n"),
            "network.allowlist[0]: `2001:db8::zz` is not a valid IPv6",
        ),
        (
            "port 0",
            text("network:\n  allowlist: ['10.0.0.1:0']\n"),
            "network.allowlist[0]: port 0 is out of range",
        ),
        (
            "port 70000",
            text("network:\n  allowlist: ['10.0.0.1:70000']\n"),
            "network.allowlist[0]: port 70000 is out of range",
        ),
        (
            "bad host glob",
            text("network:\n  allowlist: ['api*.example.com']\n"),
            "network.allowlist[0]: `api*.example.com` is not",
        ),
        (
            "unknown capability",
            text("capabilities:\n  deny: [file_wrte]\n"),
            "capabilities.deny[0]: unknown capability `file_wrte`; did you mean `file_write`?",
        ),
        (
            "empty mcp_tool name",
            text("capabilities:\n  allow: ['mcp_tool:']\n"),
            "capabilities.allow[0]: `mcp_tool:` needs a name",
        ),
        (
            "negative budget",
            text("budget: {daily_limit_usd: -5}\n"),
            "budget.daily_limit_usd: -5 is not a limit",
        ),
        (
            "bad budget action",
            text("budget: {action_on_exceed: explode}\n"),
            "budget.action_on_exceed: unknown variant `explode`",
        ),
        (
            "bad time of day",
            text("schedule: {active_hours: {start: '25:00', end: '10:00'}}\n"),
            "schedule.active_hours.start: `25:00` is not a time of day",
        ),
        (
            "bad time zone",
            text("budget: {timezone: 'Mars Base'}\n"),
            "budget.timezone: `Mars Base` is not an IANA time zone name",
        ),
        (
            "zero approval timeout",
            text("approval_timeout_secs: 0\n"),
            "1:24: approval_timeout_secs: 0 is not a timeout",
        ),
        (
            "tool allow not a bool",
            text("tools:\n  x: {allow: yes please}\n"),
            "tools.x.allow: invalid type: string",
        ),
        (
            "negative tool limit",
            text("tools:\n  x: {limit_per_hour: -1}\n"),
            "tools.x.limit_per_hour: invalid type: integer `-1`, expected u32",
        ),
        (
            "tool listed twice",
            text("tools:\n  bash: {allow: true}\n  bash: {allow: false}\n"),
            "tools: tool `bash` is listed twice",
        ),
        (
            "duplicate key",
            text("mode: audit\nmode: enforce\n"),
            "duplicate field `mode`",
        ),
        (
            "two documents",
            text("mode: audit\n---\nmode: enforce\n"),
            "more than one document",
        ),
        ("empty file", Vec::new(), "1:1: policy is empty"),
        (
            "only comments",
            text("# nothing here\n   # still nothing\n\n"),
            "1:1: policy is empty",
        ),
        (
            "only a document marker",
            text("---\n"),
            "1:1: policy is empty",
        ),
        (
            "NUL byte in file",
            b"mode: audit\n\0\n".to_vec(),
            "2:1: policy contains a NUL byte",
        ),
        (
            "invalid UTF-8",
            b"mode: audit\n\xff\xfe\n".to_vec(),
            "2:1: policy is not valid UTF-8",
        ),
        (
            "2 MiB file",
            {
                let mut big = b"mode: audit\n".to_vec();
                big.resize(2 * 1024 * 1024, b'#');
                big
            },
            "1:1: policy is 1048577 bytes; the limit is 1048576",
        ),
    ];
    // Billion laughs: each level repeats the previous one ten times.
    let mut bomb =
        String::from("data:\n  sensitive_patterns: &l0 [x, x, x, x, x, x, x, x, x, x]\n");
    for level in 1..10 {
        let refs = vec![format!("*l{}", level - 1); 10].join(", ");
        bomb.push_str(&format!("l{level}: &l{level} [{refs}]\n"));
    }
    // The typed schema holds only lists of strings, so an alias bomb cannot
    // expand anywhere: it is refused at its first out-of-place node.
    cases.push((
        "alias expansion bomb",
        bomb.into_bytes(),
        "3:1: l1: unknown key",
    ));
    let deep = format!(
        "syscalls:\n  allow: {}{}\n",
        "[".repeat(300),
        "]".repeat(300)
    );
    cases.push((
        "nested lists",
        deep.into_bytes(),
        "2:11: syscalls.allow[0]: invalid type: sequence",
    ));
    let half = 500 * 1024;
    let flow_bomb = format!("x: {}{}\n", "[".repeat(half), "]".repeat(half));
    cases.push((
        "1 MiB flow nesting bomb",
        flow_bomb.into_bytes(),
        "1:4100: policy has more than 4096 `[`/`{` characters",
    ));
    let block_bomb: String = (0..1400)
        .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
        .collect();
    cases.push((
        "deep block nesting",
        block_bomb.into_bytes(),
        "1:1: k0: unknown key",
    ));
    cases
}

#[test]
fn every_malformed_policy_is_refused_with_one_line_naming_the_place() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cases = malformed_cases();
    assert!(cases.len() >= 40, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for (index, (name, content, fragment)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("case{index}.yaml"));
        std::fs::write(&path, content).expect("write case");
        let out = check(&path, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        let place = format!("{}:", path.display());
        let problem = if out.status.code() != Some(1) {
            Some(format!("exit {:?}", out.status.code()))
        } else if stderr.contains("panicked") {
            Some("panicked".to_owned())
        } else if lines.len() != 1 {
            Some(format!("{} stderr lines", lines.len()))
        } else if !lines[0].starts_with(&place) || !has_line_col(&lines[0][place.len()..]) {
            Some("no file:line:col".to_owned())
        } else if !lines[0].contains(fragment) {
            Some(format!("missing `{fragment}`"))
        } else {
            None
        };
        if let Some(problem) = problem {
            failures.push(format!("{name}: {problem}: {stderr}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn has_line_col(after_file: &str) -> bool {
    let mut parts = after_file.splitn(3, ':');
    let is_number =
        |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    is_number(parts.next()) && is_number(parts.next())
}

#[test]
fn a_missing_file_is_refused_naming_it() {
    let out = check(Path::new("/nonexistent/policy.yaml"), &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("/nonexistent/policy.yaml: cannot read"),
        "{stderr}"
    );
}

fn shipped_policies() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let mut paths = vec![root.join("default.yaml")];
    let examples = std::fs::read_dir(root.join("examples")).expect("policies/examples");
    paths.extend(examples.map(|e| e.expect("dir entry").path()));
    paths
}

#[test]
fn every_shipped_policy_passes_check_on_both_arches() {
    let policies = shipped_policies();
    assert!(policies.len() >= 4, "default plus at least three examples");
    for path in policies {
        for arch in ["x86_64", "aarch64"] {
            let out = check(&path, &["--arch", arch]);
            assert!(
                out.status.success(),
                "{} ({arch}): {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn check_json_reports_the_lowered_rules() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/default.yaml");
    let out = check(&path, &["--json", "--arch", "x86_64"]);
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(json["arch"], "x86_64");
    assert_eq!(json["mode"], "enforce");
    assert_eq!(json["syscalls"]["kind"], "allowlist");
    let names: Vec<&str> = json["syscalls"]["allow"]
        .as_array()
        .expect("allow list")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert!(names.contains(&"openat") && !names.contains(&"io_uring_setup"));
    assert_eq!(json["egress"]["mode"], "allowlist");
    assert_eq!(json["egress"]["rules"][0]["net"], "127.0.0.0/8");
    assert_eq!(json["paths"]["write"], "allowlist");
}

#[test]
fn a_reader_that_stops_early_does_not_make_check_panic() {
    use std::io::{BufRead, BufReader};
    // Output larger than a pipe's 64 KiB buffer, so the writer does meet
    // the closed read end.
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("big.yaml");
    let hosts: Vec<String> = (0..4000u32)
        .map(|i| std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string())
        .collect();
    std::fs::write(
        &path,
        format!("network:\n  allowlist: [{}]\n", hosts.join(", ")),
    )
    .expect("write policy");
    let mut child = Command::new(env!("CARGO_BIN_EXE_aa-policyd"))
        .args(["check", "--json"])
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run aa-policyd");
    let mut first = String::new();
    let stdout = child.stdout.take().expect("stdout");
    BufReader::new(stdout)
        .read_line(&mut first)
        .expect("first line");
    // The pipe's read end is closed here, like `aa-policyd check --json | head -1`.
    let out = child.wait_with_output().expect("wait");
    assert_eq!(first.trim(), "{");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn check_warns_about_deny_rules_a_rename_can_move_and_about_io_uring() {
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "syscalls: {allow: [read, io_uring_setup]}\nfilesystem:\n  write: {allow: [/srv]}\n  deny: [/srv/app/secrets, /etc/shadow]\n",
    )
    .expect("write policy");
    let out = check(&policy, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("warning: filesystem.deny /srv/app/secrets: it lies inside the write-allowed /srv, so renaming a parent directory moves it out from under the rule"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("filesystem.deny /etc/shadow"),
        "/etc is not writable: {stdout}"
    );
    assert!(
        stdout.contains("syscalls.allow permits io_uring_setup"),
        "{stdout}"
    );
    assert!(!stdout.contains("no probe enforces"), "{stdout}");
    // The shipped default keeps its deny rules outside its writable trees.
    let default = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/default.yaml");
    let stdout = String::from_utf8_lossy(&check(&default, &[]).stdout).into_owned();
    assert!(!stdout.contains("warning"), "{stdout}");
}

#[test]
fn check_says_which_host_names_dns_aware_egress_enforces() {
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "network:\n  allowlist: [10.0.0.0/8, api.openai.com, \"*.Anthropic.com:443\"]\n",
    )
    .expect("write policy");
    let out = check(&policy, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    for host in ["api.openai.com", "*.anthropic.com:443"] {
        assert!(
            stdout.contains(&format!(
                "enforced by DNS-aware egress: network.allowlist: {host} "
            )),
            "{host}: {stdout}"
        );
    }
    assert!(
        !stdout.contains("not lowered: network.allowlist"),
        "{stdout}"
    );
    assert!(
        stdout.contains("1 kernel rule and 2 host names"),
        "{stdout}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&check(&policy, &["--json"]).stdout).expect("valid JSON");
    assert_eq!(json["egress"]["mode"], "allowlist+hosts");
    assert_eq!(json["dns_hosts"][0]["pattern"], "*.anthropic.com");
    assert_eq!(json["dns_hosts"][0]["port"], 443);

    // `*` lifts the restriction: nothing to resolve for.
    std::fs::write(&policy, "network:\n  allowlist: [\"*\", api.openai.com]\n")
        .expect("write policy");
    let stdout = String::from_utf8_lossy(&check(&policy, &[]).stdout).into_owned();
    assert!(stdout.contains("egress unrestricted"), "{stdout}");
    assert!(!stdout.contains("enforced by DNS-aware egress"), "{stdout}");
}
