//! The remote watcher (`aa-policyd watch`) driving a daemon started with
//! `--no-watch`, against the real kernel.
//!
//! Why this exists: privilege separation puts the file watching, parsing and
//! diffing in an unprivileged process that only talks to the control socket.
//! That split must not weaken anything: a rename save still reaches the
//! kernel exactly; an invalid save sends nothing and says where it is wrong;
//! a delta the safety guard refuses is refused by the daemon (which re-checks
//! it) and leaves the confined process and the kernel rules alone; and a
//! `--no-watch` daemon really does not act on saves by itself.
//!
//! Run as root; `AA_REQUIRE_KERNEL=1` turns a skip into a failure.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aa_policyd::control::wire::{Outcome, Request, Response};
use sha2::{Digest, Sha256};
use support::Plain;
use support::daemon::{Daemon, policy_text, rules_of};

/// A running `aa-policyd watch`, killed and reaped on drop.
struct Watcher {
    child: Plain,
    log_path: PathBuf,
}

impl Watcher {
    /// Starts the watcher on the daemon's policy and socket, and waits until
    /// its inotify watch on the policy's directory exists.
    fn start(daemon: &Daemon) -> Watcher {
        let log_path = daemon.dir.path().join("watcher.log");
        let log = std::fs::File::create(&log_path).expect("watcher log file");
        let child = Command::new(env!("CARGO_BIN_EXE_aa-policyd"))
            .arg("watch")
            .arg("--policy")
            .arg(&daemon.policy)
            .arg("--socket")
            .arg(&daemon.socket)
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("watcher log fd"))
            .stderr(log)
            .spawn()
            .expect("start aa-policyd watch");
        let watcher = Watcher {
            child: Plain(child),
            log_path,
        };
        watcher.wait_until_watching();
        watcher
    }

    fn pid(&self) -> u32 {
        self.child.0.id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The watcher has no readiness signal, so look at what the kernel says:
    /// an inotify fd of this process with a watch on it.
    fn wait_until_watching(&self) {
        let proc_dir = PathBuf::from(format!("/proc/{}", self.pid()));
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let watching = std::fs::read_dir(proc_dir.join("fd"))
                .into_iter()
                .flatten()
                .flatten()
                .any(|fd| {
                    let inotify = std::fs::read_link(fd.path())
                        .is_ok_and(|target| target == Path::new("anon_inode:inotify"));
                    inotify
                        && std::fs::read_to_string(proc_dir.join("fdinfo").join(fd.file_name()))
                            .is_ok_and(|info| info.contains("inotify wd:"))
                });
            if watching {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "the watcher set up no inotify watch within 5 s; its log:\n{}",
            self.log()
        );
    }

    /// Polls the watcher's log for up to 5 s until `want` holds.
    fn wait_for_log(&self, what: &str, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = self.log();
            if want(&log) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "the watcher never logged {what}; its log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Saves like an editor that writes a temporary file and renames it over.
fn rename_save(policy: &Path, text: &str) {
    let temp = policy.with_file_name(".policy.yaml.swp");
    std::fs::write(&temp, text).expect("write the temporary file");
    std::fs::rename(&temp, policy).expect("rename over the policy");
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn a_rename_save_reaches_the_kernel_through_the_remote_watcher() {
    let initial = policy_text("kcmp");
    let Some(daemon) = Daemon::start("remote_rename", &initial, &["--no-watch"]) else {
        return;
    };
    let before = daemon.status();
    assert!(!before.watching, "--no-watch daemons do not watch");
    assert_eq!(before.generation, 1);
    let watcher = Watcher::start(&daemon);

    let new = policy_text("syslog");
    let saved = Instant::now();
    rename_save(&daemon.policy, &new);
    let status = daemon.wait_for("generation 2", |s| s.generation == 2);
    eprintln!("rename save to generation 2 in {:?}", saved.elapsed());

    assert_eq!(daemon.kernel_rules(), rules_of(&new));
    let record = status.last_reload.expect("a reload was recorded");
    assert_eq!(record.outcome, Outcome::Applied);
    assert_eq!(record.trigger, "remote-watcher");
    assert_eq!(record.generation, 2);
    assert_eq!(status.policy_sha256, Some(sha256_hex(&new)));
    watcher.wait_for_log("the applied generation", |log| {
        log.contains("daemon applied: generation 2")
    });

    // The delta was the one syscall that differs, not a full rewrite.
    assert_eq!(record.ops, 1, "one SetSyscalls op");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(daemon.status().generation, 2, "applied exactly once");
    assert!(!daemon.log().contains("panicked"));
}

#[test]
fn an_invalid_save_sends_nothing_and_the_watcher_says_where_it_is_wrong() {
    let initial = policy_text("kcmp");
    let Some(daemon) = Daemon::start("remote_invalid", &initial, &["--no-watch"]) else {
        return;
    };
    let before = daemon.status();
    let watcher = Watcher::start(&daemon);

    rename_save(&daemon.policy, "syscalls:\n  allow: [read, opnat]\n");
    let log = watcher.wait_for_log("the invalid save", |log| log.contains("opnat"));
    let line = log
        .lines()
        .find(|l| l.contains("opnat"))
        .expect("a line about the invalid save");
    assert!(line.contains("invalid"), "{line}");
    assert!(
        line.contains("policy.yaml:2:17: syscalls.allow[1]: unknown syscall `opnat`"),
        "{line}"
    );

    // Give a (wrong) delta time to arrive, then check none did.
    std::thread::sleep(Duration::from_millis(300));
    let after = daemon.status();
    assert_eq!(after.generation, before.generation);
    assert_eq!(
        after.last_reload, before.last_reload,
        "nothing reached the daemon"
    );
    assert_eq!(daemon.kernel_rules(), rules_of(&initial));

    // The watcher keeps going: the next valid save is applied.
    let fixed = policy_text("acct");
    rename_save(&daemon.policy, &fixed);
    daemon.wait_for("generation 2", |s| s.generation == 2);
    assert_eq!(daemon.kernel_rules(), rules_of(&fixed));
}

#[test]
fn a_delta_that_would_kill_a_confined_process_is_refused_by_the_daemon() {
    let initial = policy_text("kcmp");
    let Some(daemon) = Daemon::start("remote_refusal", &initial, &["--no-watch"]) else {
        return;
    };
    let mut sleeper = Plain(
        Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("start sleep"),
    );
    let pid = sleeper.0.id();
    match daemon
        .client()
        .request(&Request::Confine { pid })
        .expect("confine the sleeper")
    {
        Response::Done => {}
        other => panic!("unexpected confine reply {other:?}"),
    }
    let before = daemon.wait_for("the sleeper confined", |s| s.confined.contains(&pid));
    let watcher = Watcher::start(&daemon);

    rename_save(&daemon.policy, "syscalls:\n  allow: []\n");
    let status = daemon.wait_for("outcome refused", |s| {
        s.last_reload
            .as_ref()
            .is_some_and(|r| r.outcome == Outcome::Refused)
    });
    let record = status.last_reload.clone().expect("a reload was recorded");
    assert_eq!(record.trigger, "remote-watcher");
    let reason = record.error.unwrap_or_default();
    assert!(
        reason.contains(&format!(
            "empty syscall allowlist while 1 process is confined (pid {pid})"
        )),
        "{reason}"
    );
    assert_eq!(status.generation, before.generation);
    assert!(
        sleeper.0.try_wait().expect("poll the sleeper").is_none(),
        "the confined process lives"
    );
    assert_eq!(
        daemon.kernel_rules(),
        rules_of(&initial),
        "the old allowlist is still enforced"
    );
    watcher.wait_for_log("the refusal", |log| {
        log.contains("daemon refused") && log.contains("empty syscall allowlist")
    });

    let _ = sleeper.0.kill();
    let _ = sleeper.0.wait();
}

#[test]
fn a_no_watch_daemon_ignores_saves_while_no_watcher_runs() {
    let initial = policy_text("kcmp");
    let Some(daemon) = Daemon::start("remote_no_watcher", &initial, &["--no-watch"]) else {
        return;
    };
    let before = daemon.status();
    assert!(!before.watching);

    let new = policy_text("syslog");
    rename_save(&daemon.policy, &new);
    std::fs::write(&daemon.policy, format!("{new}# saved in place\n")).expect("save in place");
    std::thread::sleep(Duration::from_millis(500));
    let after = daemon.status();
    assert_eq!(after.generation, before.generation, "no reload happened");
    assert_eq!(after.last_reload, before.last_reload);
    assert_eq!(daemon.kernel_rules(), rules_of(&initial));

    // The save was valid all along: a watcher started now sends it.
    let _watcher = Watcher::start(&daemon);
    daemon.wait_for("generation 2", |s| s.generation == 2);
    assert_eq!(daemon.kernel_rules(), rules_of(&new));
}

#[test]
fn a_delta_computed_against_an_older_generation_is_refused_as_stale() {
    use aa_policyd::control::client::ClientError;
    use aa_policyd::control::wire::{DeltaSource, Request, Response, delta_to_wire};
    let Some(daemon) = Daemon::start("remote_stale", &policy_text("kcmp"), &["--no-watch"]) else {
        return;
    };
    let mut client = daemon.client();
    let generation = match client.request(&Request::Applied).expect("applied") {
        Response::Applied { generation, .. } => generation,
        other => panic!("unexpected {other:?}"),
    };
    let delta = aa_policyd::delta::diff(
        &rules_of(&policy_text("kcmp")),
        &rules_of(&policy_text("syslog")),
    );
    let stale = Request::ApplyDelta {
        ops: delta_to_wire(&delta),
        source: DeltaSource {
            policy_path: "test".into(),
            sha256: "0".repeat(64),
            text: String::new(),
        },
        base_generation: generation + 7,
    };
    match client.request(&stale) {
        Err(ClientError::Daemon(message)) => {
            assert!(message.starts_with("stale delta"), "{message}")
        }
        other => panic!("a stale delta was not refused: {other:?}"),
    }
    assert_eq!(daemon.status().generation, generation, "nothing applied");
    assert_eq!(daemon.kernel_rules(), rules_of(&policy_text("kcmp")));
}
