//! The daemon's structured logs reach a real systemd-journald with their
//! fields intact: a reload entry carries `GENERATION`, `POLICY_SHA256`,
//! `POLICY_PATH`, `OUTCOME`, `OPS` and `TRIGGER`; a probe event carries
//! `AA_EVENT`, `PID`, `COMM` and `SYSCALL`; both under
//! `SYSLOG_IDENTIFIER=aa-policyd`.
//!
//! How: a shell script (written into the test's temp dir) runs inside a
//! private mount namespace (`unshare --mount --propagation private`). It puts
//! tmpfs over `/run` (and `/var/log/journal` if present), so journald's
//! sockets and its volatile journal exist only in that namespace and the
//! machine's journal is untouched; it starts `systemd-journald` (without
//! CAP_AUDIT_CONTROL, so it cannot switch kernel auditing on), then the real
//! daemon under `systemd-cat` with `JOURNAL_STREAM` set to its stderr's
//! device and inode, exactly as systemd does for a service. The test drives
//! the daemon from outside through its control socket and policy file (both
//! in the temp dir): one applied reload, one confined `sh` killed on
//! `write`. The script then dumps the journal with
//! `journalctl --directory=/run/log/journal -o json`, stops the daemon and
//! journald, and the test checks the entries. Processes the test started are
//! killed by PID on drop and the daemon's pin dir is unloaded.

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aa_policyd::control::client::Client;
use aa_policyd::control::wire::{Outcome, Request, Response, StatusReport};
use aa_policyd::delta::diff;
use aa_policyd::loader::kernel;
use sha2::{Digest, Sha256};
use support::daemon::rules_of;

const JOURNALD: &str = "/lib/systemd/systemd-journald";
/// The identifier `systemd-cat` gives the daemon's stderr stream: different
/// from the daemon's own, so an entry under `aa-policyd` can only have come
/// through the native protocol (tracing-journald), not the stream.
const STREAM_IDENTIFIER: &str = "aa-policyd-stderr";

/// Runs inside the private mount namespace. Arguments: temp dir, daemon
/// binary, policy, control socket, pin dir. Talks to the test through files
/// in the temp dir: `journald.pid`, `daemon.pid` (written), `done` (waited
/// for), `journal.json` and `daemon.status` (written at the end).
const SCRIPT: &str = r#"
set -eu
T=$1 BIN=$2 POLICY=$3 SOCKET=$4 PIN=$5
JOURNALD_PID= DAEMON_PID=

stop_daemon() {
    if [ -n "$DAEMON_PID" ]; then
        kill -TERM "$DAEMON_PID" 2>/dev/null || true
        rc=0; wait "$DAEMON_PID" || rc=$?
        echo "$rc" > "$T/daemon.status"
        DAEMON_PID=
    fi
}
stop_all() {
    stop_daemon
    if [ -n "$JOURNALD_PID" ]; then
        kill -TERM "$JOURNALD_PID" 2>/dev/null || true
        wait "$JOURNALD_PID" || true
        JOURNALD_PID=
    fi
}
trap stop_all EXIT
trap 'exit 1' INT TERM HUP

case "$T" in /run/*) echo "the temp dir $T must not be under /run" >&2; exit 2 ;; esac

# Private to this mount namespace (propagation private): the machine's
# /run/systemd/journal and journals never see any of this.
mount -t tmpfs -o mode=0755,size=64m aa-journald-test /run
if [ -d /var/log/journal ]; then
    mount -t tmpfs -o mode=0755,size=8m aa-journald-test /var/log/journal
fi
mkdir -p /run/systemd/journald.conf.d /run/log/journal
cat > /run/systemd/journald.conf.d/aa-policyd-test.conf <<'EOF'
[Journal]
Storage=volatile
ReadKMsg=no
ForwardToSyslog=no
ForwardToKMsg=no
ForwardToConsole=no
ForwardToWall=no
RateLimitBurst=0
EOF

env -u NOTIFY_SOCKET -u WATCHDOG_PID -u WATCHDOG_USEC -u LISTEN_FDS -u LISTEN_PID \
    -u LISTEN_FDNAMES SYSTEMD_LOG_LEVEL=debug SYSTEMD_LOG_TARGET=console \
    setpriv --bounding-set=-audit_control --inh-caps=-audit_control \
    /lib/systemd/systemd-journald > "$T/journald.log" 2>&1 &
JOURNALD_PID=$!
echo "$JOURNALD_PID" > "$T/journald.pid"

i=0
while [ ! -S /run/systemd/journal/socket ] || [ ! -S /run/systemd/journal/stdout ]; do
    kill -0 "$JOURNALD_PID" 2>/dev/null || { echo "journald exited early" >&2; exit 1; }
    i=$((i + 1))
    [ "$i" -le 400 ] || { echo "journald sockets did not appear within 20 s" >&2; exit 1; }
    sleep 0.05
done

# What systemd does for a service with StandardError=journal: stderr is a
# stream socket to journald, and JOURNAL_STREAM names its device and inode.
env -u NOTIFY_SOCKET -u JOURNAL_STREAM \
    systemd-cat --identifier=aa-policyd-stderr \
    sh -c 'JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) && export JOURNAL_STREAM && exec "$@"' \
    sh "$BIN" run --policy "$POLICY" --socket "$SOCKET" --pin-dir "$PIN" < /dev/null &
DAEMON_PID=$!
echo "$DAEMON_PID" > "$T/daemon.pid"

i=0
while [ ! -e "$T/done" ]; do
    kill -0 "$DAEMON_PID" 2>/dev/null || { echo "the daemon exited early" >&2; break; }
    i=$((i + 1))
    [ "$i" -le 2400 ] || { echo "the test did not finish within 120 s" >&2; break; }
    sleep 0.05
done

dump() {
    journalctl --sync || true
    journalctl --directory=/run/log/journal -o json > "$T/journal.json.part"
    mv "$T/journal.json.part" "$T/journal.json"
}
# The daemon logs events from its own thread: wait until both are in.
i=0
while :; do
    dump
    if grep -q '"AA_EVENT":"denied_syscall"' "$T/journal.json" \
        && grep -q '"AA_EVENT":"denied_file"' "$T/journal.json" \
        && grep -q '"AA_EVENT":"denied_dns"' "$T/journal.json" \
        && grep -q '"TRIGGER":"file-change"' "$T/journal.json"; then
        break
    fi
    i=$((i + 1))
    [ "$i" -le 50 ] || break
    sleep 0.1
done
stop_daemon
dump
stop_all
"#;

/// Why this test cannot run here, if it cannot (missing tools).
fn missing_tools() -> Option<String> {
    if !Path::new(JOURNALD).exists() {
        return Some(format!("{JOURNALD} is missing"));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for tool in [
        "unshare",
        "systemd-cat",
        "journalctl",
        "setpriv",
        "stat",
        "mount",
    ] {
        if !std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()) {
            return Some(format!("`{tool}` is not in PATH"));
        }
    }
    None
}

/// A policy without `write` (and its vectored and positional forms), so a
/// confined `sh -c 'echo hi'` is killed on its first `write`, and with
/// `denied` denied, so a `cat` of a file in it is killed at its open.
/// `extra` is one more syscall, so two versions differ by exactly one rule.
fn policy(extra: &str, denied: &Path) -> String {
    format!(
        "apiVersion: agent-assembly.dev/v1
kind: Policy
metadata: {{name: journald-test}}
spec:
  syscalls:
    allow: [\"@default\", \"@file-system\", \"@io-event\", \"@ipc\", \"@memory\",
            \"@process\", \"@signal\", \"@timer\", \"@credentials\", \"@resources\",
            \"@network-io\", read, readv, pread64, close, close_range, dup, dup2, dup3,
            lseek, ioctl, sysinfo, umask, setpgid, setsid, getcpu{extra}]
  filesystem:
    deny: [{}]
  network:
    allowlist: [api.example.test]
",
        denied.display()
    )
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The script, the journald and daemon it started, and the pin dir; all
/// stopped or removed on drop, by PID.
struct Scenario {
    dir: tempfile::TempDir,
    pin_dir: PathBuf,
    script: Option<Child>,
}

impl Scenario {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    /// Everything a failure message needs.
    fn logs(&self) -> String {
        format!(
            "--- script output:\n{}\n--- journald log (tail):\n{}",
            self.read("script.log"),
            tail(&self.read("journald.log"), 40)
        )
    }

    fn recorded_pid(&self, name: &str) -> Option<u32> {
        self.read(name).trim().parse().ok()
    }

    fn script_exited(&mut self) -> Option<std::process::ExitStatus> {
        self.script
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    fn wait_ready(&mut self, socket: &Path) -> StatusReport {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut client) = Client::connect(socket)
                && let Ok(Response::Status(status)) = client.request(&Request::Status)
            {
                return *status;
            }
            if let Some(exit) = self.script_exited() {
                panic!(
                    "the script ended ({exit}) before the daemon was ready\n{}",
                    self.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not answer on {} within 30 s\n{}",
                socket.display(),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_script(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(exit) = self.script_exited() {
                return exit;
            }
            assert!(
                Instant::now() < deadline,
                "the script did not finish within {timeout:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Whether `pid` is alive and its command line mentions `needle` (guards
/// against signalling a recycled PID).
fn alive_with(pid: u32, needle: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(needle))
        .unwrap_or(false)
}

/// SIGTERM, then SIGKILL after 5 s, to a process that is not our child.
fn terminate(pid: u32, needle: &str) {
    if !alive_with(pid, needle) {
        return;
    }
    // SAFETY: signalling a PID this test recorded and just re-identified.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive_with(pid, needle) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if alive_with(pid, needle) {
        // SAFETY: as above.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        let pin = self.pin_dir.display().to_string();
        if let Some(pid) = self.recorded_pid("daemon.pid") {
            terminate(pid, &pin);
        }
        if let Some(pid) = self.recorded_pid("journald.pid") {
            terminate(pid, "systemd-journald");
        }
        if let Some(mut script) = self.script.take() {
            let _ = script.kill();
            let _ = script.wait();
        }
        if let Err(error) = kernel::unload(&self.pin_dir) {
            eprintln!("cleanup of {} failed: {error}", self.pin_dir.display());
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

type Entry = BTreeMap<String, serde_json::Value>;

fn field<'a>(entry: &'a Entry, name: &str) -> Option<&'a str> {
    entry.get(name).and_then(serde_json::Value::as_str)
}

fn describe(entries: &[Entry]) -> String {
    entries
        .iter()
        .map(|e| {
            format!(
                "[{}] {}",
                field(e, "SYSLOG_IDENTIFIER").unwrap_or("?"),
                field(e, "MESSAGE").unwrap_or("")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn reloads_and_deny_events_reach_journald_as_structured_fields() {
    if !support::kernel_available("journald") {
        return;
    }
    if let Some(why) = missing_tools() {
        if std::env::var("AA_REQUIRE_KERNEL").as_deref() == Ok("1") {
            panic!("journald test cannot run ({why}) and AA_REQUIRE_KERNEL=1 forbids skipping");
        }
        eprintln!("SKIPPED journald test: {why} (set AA_REQUIRE_KERNEL=1 to make this a failure)");
        return;
    }

    let dir = tempfile::tempdir().expect("temp dir");
    let mut scenario = Scenario {
        pin_dir: support::unique_pin_dir("journald"),
        dir,
        script: None,
    };
    let etc = scenario.path("etc");
    std::fs::create_dir(&etc).expect("mkdir etc");
    let policy_path = etc.join("policy.yaml");
    let socket = scenario.path("policyd.sock");
    let denied = scenario.path("denied");
    std::fs::create_dir(&denied).expect("mkdir denied");
    std::fs::write(denied.join("secret"), "secret\n").expect("write secret");
    let (first, second) = (policy("", &denied), policy(", kcmp", &denied));
    std::fs::write(&policy_path, &first).expect("write policy");
    std::fs::write(scenario.path("journald-test.sh"), SCRIPT).expect("write script");
    let log = std::fs::File::create(scenario.path("script.log")).expect("script log");

    let script = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh"])
        .arg(scenario.path("journald-test.sh"))
        .arg(scenario.dir.path())
        .arg(env!("CARGO_BIN_EXE_aa-policyd"))
        .arg(&policy_path)
        .arg(&socket)
        .arg(&scenario.pin_dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("script log fd"))
        .stderr(log)
        .spawn()
        .expect("start unshare");
    scenario.script = Some(script);

    // 1. The daemon is up, and believes its stderr is the journal stream.
    let ready = scenario.wait_ready(&socket);
    let daemon_pid = scenario
        .recorded_pid("daemon.pid")
        .expect("the script recorded the daemon's PID");
    let environ = std::fs::read(format!("/proc/{daemon_pid}/environ")).expect("daemon environ");
    let stream = environ
        .split(|&b| b == 0)
        .find_map(|var| var.strip_prefix(b"JOURNAL_STREAM="))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .expect("JOURNAL_STREAM is set for the daemon");
    let stderr = std::fs::metadata(format!("/proc/{daemon_pid}/fd/2")).expect("stat daemon stderr");
    assert_eq!(
        stream,
        format!("{}:{}", stderr.dev(), stderr.ino()),
        "JOURNAL_STREAM matches the daemon's stderr, so stderr_is_journal() holds"
    );
    assert_eq!(
        ready.last_reload.as_ref().map(|r| r.outcome),
        Some(Outcome::Applied),
        "{ready:#?}"
    );

    // 2. One applied reload: a save that adds one syscall, made right after
    // READY — the watch must already exist then, so one save is enough.
    std::fs::write(&policy_path, &second).expect("save the policy");
    let deadline = Instant::now() + Duration::from_secs(5);
    let reloaded = loop {
        let status = match Client::connect(&socket).map(|mut c| c.request(&Request::Status)) {
            Ok(Ok(Response::Status(status))) => *status,
            other => panic!("status request failed: {other:?}\n{}", scenario.logs()),
        };
        // Only an applied reload raises the generation.
        if status.generation > ready.generation {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the save made right after READY was not applied within 5 s: {status:#?}\n{}",
            scenario.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    };

    // 3. One deny event: `sh` confined by the daemon is killed on `write`.
    let exec = Command::new(env!("CARGO_BIN_EXE_aa-policyd"))
        .arg("exec")
        .arg("--socket")
        .arg(&socket)
        .args(["--", "sh", "-c", "echo hi"])
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("run aa-policyd exec");
    assert!(
        !exec.status.success(),
        "sh must be killed on write, got {} ({})",
        exec.status,
        String::from_utf8_lossy(&exec.stderr)
    );

    // 4. One file denial: `cat` of a file under the denied directory.
    let secret = denied.join("secret").display().to_string();
    let exec = Command::new(env!("CARGO_BIN_EXE_aa-policyd"))
        .args(["exec", "--socket"])
        .arg(&socket)
        .args(["--", "cat", &secret])
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .output()
        .expect("run aa-policyd exec");
    assert_eq!(exec.status.code(), Some(137), "cat is killed at its open");

    // 4b. One DNS denial: a name the allowlist does not name, looked up
    // through glibc (redirected to the daemon's resolver, refused).
    let exec = Command::new(env!("CARGO_BIN_EXE_aa-policyd"))
        .args(["exec", "--socket"])
        .arg(&socket)
        .args(["--", "getent", "hosts", "refused.example.test"])
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .output()
        .expect("run aa-policyd exec");
    assert_eq!(
        exec.status.code(),
        Some(2),
        "getent finds nothing: {exec:?}"
    );

    // 5. The script dumps the journal and stops everything.
    std::fs::write(scenario.path("done"), "").expect("signal done");
    let exit = scenario.wait_script(Duration::from_secs(60));
    assert!(
        exit.success(),
        "the script failed ({exit})\n{}",
        scenario.logs()
    );
    assert_eq!(
        scenario.read("daemon.status").trim(),
        "0",
        "the daemon exits 0 on SIGTERM\n{}",
        scenario.logs()
    );
    let dump = scenario.read("journal.json");
    let entries: Vec<Entry> = dump
        .lines()
        .map(|line| {
            serde_json::from_str(line).expect("journalctl -o json prints one object a line")
        })
        .collect();
    let ours: Vec<Entry> = entries
        .iter()
        .filter(|e| field(e, "SYSLOG_IDENTIFIER") == Some("aa-policyd"))
        .cloned()
        .collect();
    let context = || {
        format!(
            "entries under aa-policyd and {STREAM_IDENTIFIER}:\n{}\n{}",
            describe(
                &entries
                    .iter()
                    .filter(|e| field(e, "SYSLOG_IDENTIFIER")
                        .is_some_and(|i| i.starts_with("aa-policyd")))
                    .cloned()
                    .collect::<Vec<_>>()
            ),
            scenario.logs()
        )
    };
    for entry in &ours {
        assert_eq!(
            field(entry, "_TRANSPORT"),
            Some("journal"),
            "native protocol, not the stream: {entry:?}"
        );
    }
    assert!(
        !entries.iter().any(|e| {
            field(e, "SYSLOG_IDENTIFIER") == Some(STREAM_IDENTIFIER)
                && field(e, "MESSAGE").is_some_and(|m| m.contains("generation"))
        }),
        "the daemon logged to its stderr stream instead of natively\n{}",
        context()
    );

    // The startup reload and the file-change reload, with every field.
    let reload = |trigger: &str| {
        ours.iter()
            .find(|e| field(e, "TRIGGER") == Some(trigger) && field(e, "OUTCOME").is_some())
            .unwrap_or_else(|| panic!("no reload entry with TRIGGER={trigger}\n{}", context()))
            .clone()
    };
    let policy_display = policy_path.display().to_string();
    let startup = reload("startup");
    assert_eq!(field(&startup, "OUTCOME"), Some("applied"), "{startup:?}");
    assert_eq!(
        field(&startup, "GENERATION"),
        Some(ready.generation.to_string().as_str()),
        "{startup:?}"
    );
    assert_eq!(
        field(&startup, "POLICY_SHA256"),
        Some(sha256_hex(first.as_bytes()).as_str()),
        "{startup:?}"
    );

    let changed = reload("file-change");
    let expected_ops = diff(&rules_of(&first), &rules_of(&second)).len();
    assert_eq!(expected_ops, 1, "the two versions differ by one rule");
    assert_eq!(field(&changed, "OUTCOME"), Some("applied"), "{changed:?}");
    assert_eq!(
        field(&changed, "GENERATION"),
        Some(reloaded.generation.to_string().as_str()),
        "{changed:?}"
    );
    assert_eq!(
        field(&changed, "POLICY_SHA256"),
        Some(sha256_hex(second.as_bytes()).as_str()),
        "{changed:?}"
    );
    assert_eq!(
        field(&changed, "POLICY_PATH"),
        Some(policy_display.as_str()),
        "{changed:?}"
    );
    assert_eq!(
        field(&changed, "OPS"),
        Some(expected_ops.to_string().as_str()),
        "{changed:?}"
    );
    assert!(
        field(&changed, "MAP_OPS").is_some_and(|n| n.parse::<u64>().is_ok_and(|n| n > 0)),
        "{changed:?}"
    );
    // tracing-journald maps INFO to priority 5 (notice) and WARN to 4.
    assert_eq!(field(&changed, "PRIORITY"), Some("5"), "info: {changed:?}");
    assert!(
        field(&changed, "MESSAGE").is_some_and(|m| m.starts_with(&format!(
            "applied generation {}: 1 ops",
            reloaded.generation
        ))),
        "{changed:?}"
    );

    // The deny event.
    let event = ours
        .iter()
        .find(|e| field(e, "AA_EVENT") == Some("denied_syscall"))
        .unwrap_or_else(|| panic!("no AA_EVENT=denied_syscall entry\n{}", context()));
    assert_eq!(field(event, "COMM"), Some("sh"), "{event:?}");
    assert_eq!(field(event, "SYSCALL"), Some("write"), "{event:?}");
    assert!(
        field(event, "PID").is_some_and(|p| p.parse::<u32>().is_ok_and(|p| p > 0)),
        "{event:?}"
    );
    assert_eq!(field(event, "PRIORITY"), Some("4"), "warning: {event:?}");
    let pid = field(event, "PID").unwrap_or_default();
    assert!(
        field(event, "MESSAGE").is_some_and(|m| m
            .starts_with(&format!("pid {pid} (sh) denied syscall write"))
            && m.ends_with("killed")),
        "{event:?}"
    );

    // The file denial, with the path, the access and the deciding rule.
    let event = ours
        .iter()
        .find(|e| field(e, "AA_EVENT") == Some("denied_file"))
        .unwrap_or_else(|| panic!("no AA_EVENT=denied_file entry\n{}", context()));
    assert_eq!(field(event, "COMM"), Some("cat"), "{event:?}");
    assert_eq!(field(event, "PATH"), Some(secret.as_str()), "{event:?}");
    assert_eq!(field(event, "ACCESS"), Some("read"), "{event:?}");
    assert_eq!(field(event, "SYSCALL"), Some("openat"), "{event:?}");
    assert_eq!(
        field(event, "REASON").map(str::to_owned),
        Some(format!(
            "denied by the filesystem.deny rule {}",
            denied.display()
        )),
        "{event:?}"
    );
    assert_eq!(field(event, "PRIORITY"), Some("4"), "warning: {event:?}");

    // The DNS denial, with the name and type.
    let event = ours
        .iter()
        .find(|e| field(e, "AA_EVENT") == Some("denied_dns"))
        .unwrap_or_else(|| panic!("no AA_EVENT=denied_dns entry\n{}", context()));
    assert_eq!(
        field(event, "DNS_NAME"),
        Some("refused.example.test"),
        "{event:?}"
    );
    assert!(
        matches!(field(event, "DNS_TYPE"), Some("A" | "AAAA")),
        "{event:?}"
    );
    assert_eq!(field(event, "PRIORITY"), Some("4"), "warning: {event:?}");
    assert!(
        field(event, "MESSAGE").is_some_and(|m| m
            .starts_with("denied DNS query for refused.example.test")
            && m.ends_with("refused")),
        "{event:?}"
    );
}
