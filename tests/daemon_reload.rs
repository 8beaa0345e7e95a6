//! The daemon's reload safety against the real kernel: an invalid save keeps
//! the generation; emptying the allowlist while a process is confined is
//! refused; the same save with nothing confined is applied; sd_notify
//! brackets every reload.

mod support;

use std::process::Command;
use std::time::Duration;

use aa_policyd::control::wire::{Outcome, Request};
use support::daemon::{Daemon, policy_text, rules_of};

#[test]
fn an_invalid_save_keeps_the_generation_and_reports_the_place() {
    let Some(daemon) = Daemon::start("invalid_save", &policy_text("kcmp"), &[]) else {
        return;
    };
    let before = daemon.status();
    std::fs::write(&daemon.policy, "syscalls:\n  allow: [read, opnat]\n").expect("save");
    let status = daemon.wait_for("outcome invalid", |s| {
        s.last_reload
            .as_ref()
            .is_some_and(|r| r.outcome == Outcome::Invalid)
    });
    assert_eq!(status.generation, before.generation);
    let error = status.last_reload.and_then(|r| r.error).unwrap_or_default();
    assert!(error.ends_with("policy.yaml:2:17: syscalls.allow[1]: unknown syscall `opnat` (not in the x86_64 or aarch64 table); did you mean `openat`?"), "{error}");
    assert_eq!(daemon.kernel_rules(), rules_of(&policy_text("kcmp")));
    assert!(daemon.log().contains("ERROR"), "logged at error level");
}

#[test]
fn a_key_that_has_no_effect_is_applied_around_and_named_in_the_log() {
    let Some(daemon) = Daemon::start("ineffective_key", &policy_text("kcmp"), &[]) else {
        return;
    };
    let before = daemon.status();
    // Upstream ignores keys beside an envelope's four; so do we, out loud.
    let text = policy_text("kcmp").replacen("kind: Policy\n", "kind: Policy\nscope: org:a\n", 1);
    std::fs::write(&daemon.policy, &text).expect("save");
    let last_at = |s: &aa_policyd::control::wire::StatusReport| {
        s.last_reload.as_ref().map_or(0, |r| r.at_unix_ms)
    };
    let status = daemon.wait_for("the save is taken", |s| last_at(s) > last_at(&before));
    let record = status.last_reload.expect("a reload record");
    assert!(
        matches!(record.outcome, Outcome::Applied | Outcome::Unchanged),
        "{record:?}"
    );
    assert!(
        support::eventually(|| daemon.log().contains("`scope` beside spec: has no effect")),
        "{}",
        daemon.log()
    );
}

#[test]
fn emptying_the_allowlist_is_refused_while_confined_and_applied_when_not() {
    let Some(daemon) = Daemon::start("refusal", &policy_text("kcmp"), &[]) else {
        return;
    };
    let mut sleeper = Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("start sleep");
    let pid = sleeper.id();
    daemon
        .client()
        .request(&Request::Confine { pid })
        .expect("confine");

    let empty = "syscalls:\n  allow: []\n";
    std::fs::write(&daemon.policy, empty).expect("save");
    let status = daemon.wait_for("outcome refused", |s| {
        s.last_reload
            .as_ref()
            .is_some_and(|r| r.outcome == Outcome::Refused)
    });
    let error = status
        .last_reload
        .as_ref()
        .and_then(|r| r.error.clone())
        .unwrap_or_default();
    assert!(
        error.contains(&format!(
            "empty syscall allowlist while 1 process is confined (pid {pid})"
        )),
        "{error}"
    );
    assert!(
        sleeper.try_wait().expect("poll").is_none(),
        "the confined process lives"
    );
    assert_eq!(
        daemon.kernel_rules(),
        rules_of(&policy_text("kcmp")),
        "old allowlist still enforced"
    );
    assert!(daemon.log().contains("refused"), "the log says why");

    let _ = sleeper.kill();
    let _ = sleeper.wait();
    daemon.wait_for("nothing confined", |s| s.confined.is_empty());
    std::fs::write(&daemon.policy, format!("{empty}# saved again\n")).expect("save again");
    let status = daemon.wait_for("outcome applied", |s| {
        s.last_reload
            .as_ref()
            .is_some_and(|r| r.outcome == Outcome::Applied)
    });
    assert_eq!(daemon.kernel_rules(), rules_of(empty));
    assert!(status.generation > 1);
}

#[test]
fn sd_notify_reports_ready_reloading_status_and_stopping() {
    let Some(mut daemon) = Daemon::start("sd_notify", &policy_text("kcmp"), &[]) else {
        return;
    };
    std::fs::write(&daemon.policy, policy_text("syslog")).expect("save");
    daemon.wait_for("generation 2", |s| s.generation == 2);
    std::thread::sleep(Duration::from_millis(100));
    daemon.stop();
    std::thread::sleep(Duration::from_millis(100));
    let messages = daemon.notify.messages();
    let position = |want: &str| {
        messages
            .iter()
            .position(|m| m.lines().any(|l| l.starts_with(want)))
    };
    let ready = position("READY=1").expect("READY=1");
    let reloading = position("RELOADING=1").expect("RELOADING=1");
    assert!(
        messages[reloading].contains("MONOTONIC_USEC="),
        "{messages:?}"
    );
    let ready_again = messages.iter().skip(reloading).position(|m| {
        m.contains("READY=1") && m.contains("STATUS=generation 2, last reload applied")
    });
    assert!(ready < reloading && ready_again.is_some(), "{messages:?}");
    assert!(
        position("STOPPING=1").is_some_and(|p| p > reloading),
        "{messages:?}"
    );
}

#[test]
fn events_streams_a_denial_of_a_process_confined_through_the_daemon() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let no_write = "syscalls:\n  allow: [\"@default\", \"@file-system\", \"@process\", \"@signal\", \"@memory\", \"@io-event\", read, pread64, lseek, close, dup, dup2, dup3, ioctl, fcntl]\n";
    let Some(daemon) = Daemon::start("events", no_write, &[]) else {
        return;
    };
    let mut follower = Command::new(env!("CARGO_BIN_EXE_aa-policyd"))
        .args(["events", "--json", "--socket"])
        .arg(&daemon.socket)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start aa-policyd events");
    std::thread::sleep(Duration::from_millis(300));
    let exec = Command::new(env!("CARGO_BIN_EXE_aa-policyd"))
        .args(["exec", "--socket"])
        .arg(&daemon.socket)
        .args(["--", "sh", "-c", "echo denied"])
        .output()
        .expect("run exec");
    assert_eq!(exec.status.code(), Some(137), "sh is killed on write");
    let (sender, lines) = std::sync::mpsc::channel();
    let stdout = follower.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = sender.send(line);
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut seen = Vec::new();
    let denial = loop {
        let wait = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(wait) {
            Ok(line) if line.contains("\"denied_syscall\"") && line.contains("write") => {
                break Some(line);
            }
            Ok(line) => seen.push(line),
            Err(_) => break None,
        }
    };
    let _ = follower.kill();
    let _ = follower.wait();
    let denial = denial.unwrap_or_else(|| panic!("no denial event; saw {seen:?}"));
    assert!(denial.contains("\"comm\":\"sh\""), "{denial}");
}
