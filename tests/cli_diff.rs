//! `aa-policyd diff` through the real binary: text diff, rule-level ops,
//! and the guard's exit code.

use std::path::{Path, PathBuf};
use std::process::Output;

fn default_policy() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/default.yaml");
    std::fs::read_to_string(path).expect("read default policy")
}

struct Pair {
    _dir: tempfile::TempDir,
    old: PathBuf,
    new: PathBuf,
}

fn pair(old: &str, new: &str) -> Pair {
    let dir = tempfile::tempdir().expect("temp dir");
    let (old_path, new_path) = (dir.path().join("old.yaml"), dir.path().join("new.yaml"));
    std::fs::write(&old_path, old).expect("write old");
    std::fs::write(&new_path, new).expect("write new");
    Pair {
        _dir: dir,
        old: old_path,
        new: new_path,
    }
}

fn diff(pair: &Pair, extra: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_aa-policyd"))
        .args(["diff", "--arch", "x86_64"])
        .args(extra)
        .arg(&pair.old)
        .arg(&pair.new)
        .output()
        .expect("run aa-policyd diff")
}

fn op_lines(out: &Output) -> Vec<String> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .skip_while(|l| !l.starts_with("rule changes:"))
        .skip(1)
        .map(|l| l.trim().to_owned())
        .collect()
}

#[test]
fn one_syscall_name_changed_prints_exactly_one_syscall_op() {
    let old = default_policy();
    let new = old.replace("      - sysinfo\n", "");
    assert_ne!(old, new, "the edit must change the file");
    let files = pair(&old, &new);

    let out = diff(&files, &[]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(op_lines(&out), ["syscalls ~ -sysinfo (261 allowed)"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("-      - sysinfo"),
        "the text diff shows the removed line:\n{stdout}"
    );

    let json: serde_json::Value =
        serde_json::from_slice(&diff(&files, &["--json"]).stdout).expect("JSON");
    assert_eq!(json["op_count"], 1);
    assert_eq!(json["ops"][0]["op"], "set_syscalls");
    assert_eq!(json["ops"][0]["removed"], serde_json::json!(["sysinfo"]));
}

#[test]
fn a_reformatted_copy_prints_no_op() {
    let old = default_policy();
    // Same meaning: comments dropped, lists reordered and in flow style,
    // a duplicate entry, and a path spelled with redundant separators.
    let new = r#"
kind: Policy
apiVersion: agent-assembly.dev/v1
spec:
  network: {allowlist: ["::1", 127.0.0.0/8, 127.0.0.0/8]}
  capabilities: {deny: [network_inbound, agent_spawn], allow: [file_read, file_write, terminal_exec]}
  filesystem:
    deny: [/var/run/secrets, /root/.ssh/, /etc/gshadow, /etc//shadow]
    write: {allow: [/tmp, /workspace, /dev/null, /dev/tty, /dev/pts, /dev/ptmx, /dev/shm, /workspace/src]}
    read: {allow: [/home, /workspace, /tmp, /dev/shm, /dev/ptmx, /dev/pts, /dev/tty, /dev/urandom, /dev/random,
                   /dev/full, /dev/zero, /dev/null, /sys/fs/cgroup, /sys/devices/system, /proc, /etc, /sbin,
                   /bin, /lib64, /lib, /usr]}
  syscalls:
    allow: [faccessat2, readahead, tee, splice, sendfile, copy_file_range, flock, fadvise64, getcpu,
            setsid, setpgid, umask, sysinfo, ioctl, "@resources", "@credentials", "@sync", "@timer",
            "@signal", "@process", "@network-io", "@memory", "@ipc", "@io-event", "@file-system",
            "@basic-io", "@default", read]
  mode: enforce
  scope: global
metadata: {name: coding-agent-default, version: "1.0"}
"#;
    let files = pair(&old, new);
    let out = diff(&files, &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("rule changes: none"), "{stdout}");
    assert!(op_lines(&out).is_empty());
    assert!(
        stdout.starts_with("---"),
        "the text diff is still shown:\n{stdout}"
    );
}

#[test]
fn emptying_the_allowlist_while_confined_exits_3_and_says_why() {
    let old = "syscalls: {allow: [read, write]}\n";
    let new = "syscalls: {allow: []}\n";
    let files = pair(old, new);

    let refused = diff(&files, &["--confined", "2"]);
    assert_eq!(refused.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(
            "refused: the new policy has an empty syscall allowlist while 2 processes are confined"
        ),
        "{stderr}"
    );

    let unconfined = diff(&files, &[]);
    assert_eq!(unconfined.status.code(), Some(0));
}

#[test]
fn an_invalid_side_exits_1_with_the_place() {
    let files = pair("mode: audit\n", "mode: audit\nsycalls: {}\n");
    let out = diff(&files, &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("new.yaml:2:1: sycalls: unknown key"),
        "{stderr}"
    );
}

#[test]
fn path_and_egress_changes_are_one_op_each() {
    let old = "filesystem: {deny: [/etc]}\nnetwork: {allowlist: [10.0.0.0/8]}\n";
    let new = "filesystem: {deny: [/etc, /srv]}\nnetwork: {allowlist: ['[::1]:443']}\n";
    let out = diff(&pair(old, new), &[]);
    assert_eq!(
        op_lines(&out),
        [
            "path + read deny /srv",
            "path + write deny /srv",
            "egress - 10.0.0.0/8",
            "egress + [::1/128]:443",
        ]
    );
}
