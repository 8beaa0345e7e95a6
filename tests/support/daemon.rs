//! A real `aa-policyd run` for tests: its own policy directory, control
//! socket and pin dir; readiness and sd_notify messages read from a
//! `NOTIFY_SOCKET` the test owns; the kernel's rules read straight from the
//! pinned maps. Dropping it stops the daemon and unloads its pin dir.

#![allow(dead_code)]

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aa_policyd::control::client::Client;
use aa_policyd::control::wire::{Request, Response, StatusReport};
use aa_policyd::loader::kernel;
use aa_policyd::lower::lower;
use aa_policyd::policy::Policy;
use aa_policyd::ruleset::{Arch, RuleSet};

/// A policy that differs from the others only in `extra_syscall` (pick one
/// outside `@system-service`, e.g. kcmp, syslog, acct, so the rules differ).
pub fn policy_text(extra_syscall: &str) -> String {
    format!(
        "apiVersion: agent-assembly.dev/v1\nkind: Policy\nmetadata: {{name: test}}\nspec:\n  syscalls:\n    allow: [\"@system-service\", {extra_syscall}]\n  network:\n    allowlist: [127.0.0.0/8]\n"
    )
}

/// The rules `text` lowers to.
pub fn rules_of(text: &str) -> RuleSet {
    let policy = Policy::parse_str(text, Path::new("expected.yaml")).expect("valid test policy");
    lower(&policy, Arch::native()).rules
}

/// Collects sd_notify datagrams.
pub struct NotifyListener {
    pub path: PathBuf,
    messages: Arc<Mutex<Vec<String>>>,
}

impl NotifyListener {
    fn bind(path: PathBuf) -> NotifyListener {
        let socket = UnixDatagram::bind(&path).expect("bind NOTIFY_SOCKET");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&messages);
        std::thread::spawn(move || {
            let mut buffer = vec![0u8; 4096];
            while let Ok(n) = socket.recv(&mut buffer) {
                let text = String::from_utf8_lossy(&buffer[..n]).into_owned();
                sink.lock().expect("notify lock").push(text);
            }
        });
        NotifyListener { path, messages }
    }

    pub fn messages(&self) -> Vec<String> {
        self.messages.lock().expect("notify lock").clone()
    }
}

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub policy: PathBuf,
    pub socket: PathBuf,
    pub pin_dir: PathBuf,
    pub notify: NotifyListener,
    log_path: PathBuf,
    extra_args: Vec<String>,
    /// A command the daemon is started through (e.g. `nsenter --net=...`).
    launcher: Vec<String>,
    child: Option<Child>,
}

impl Daemon {
    /// Starts a daemon on `initial` policy text, written to
    /// `<dir>/etc/policy.yaml`. `None` when kernel tests are skipped.
    pub fn start(name: &str, initial: &str, extra_args: &[&str]) -> Option<Daemon> {
        Daemon::start_with(
            name,
            |etc| std::fs::write(etc.join("policy.yaml"), initial).expect("write policy"),
            extra_args,
        )
    }

    /// Like `start`, but `setup` lays out `<dir>/etc` itself (it must end
    /// with a readable `policy.yaml` there, e.g. a `..data` symlink chain).
    pub fn start_with(
        name: &str,
        setup: impl FnOnce(&Path),
        extra_args: &[&str],
    ) -> Option<Daemon> {
        Daemon::start_through(name, setup, extra_args, &[])
    }

    /// Like `start_with`, with the daemon started through `launcher`
    /// (which must exec it, so the child's PID is the daemon's).
    pub fn start_through(
        name: &str,
        setup: impl FnOnce(&Path),
        extra_args: &[&str],
        launcher: &[&str],
    ) -> Option<Daemon> {
        if !super::kernel_available(name) {
            return None;
        }
        let pin_dir = super::unique_pin_dir(name);
        let dir = tempfile::tempdir().expect("temp dir");
        let etc = dir.path().join("etc");
        std::fs::create_dir(&etc).expect("mkdir etc");
        setup(&etc);
        let policy = etc.join("policy.yaml");
        let socket = dir.path().join("policyd.sock");
        let notify = NotifyListener::bind(dir.path().join("notify.sock"));
        let log_path = dir.path().join("daemon.log");
        let mut daemon = Daemon {
            dir,
            policy,
            socket,
            pin_dir,
            notify,
            log_path,
            extra_args: extra_args.iter().map(|a| (*a).to_owned()).collect(),
            launcher: launcher.iter().map(|a| (*a).to_owned()).collect(),
            child: None,
        };
        daemon.spawn(&[]);
        daemon.wait_ready();
        Some(daemon)
    }

    /// Starts `aa-policyd run` on this daemon's paths, with `env` added
    /// (e.g. a fault point), appending to its log.
    fn spawn(&mut self, env: &[(&str, &str)]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("log file");
        let binary = env!("CARGO_BIN_EXE_aa-policyd");
        let mut command = match self.launcher.split_first() {
            Some((first, rest)) => {
                let mut command = Command::new(first);
                command.args(rest).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        command
            .arg("run")
            .arg("--policy")
            .arg(&self.policy)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .args(&self.extra_args)
            .env("NOTIFY_SOCKET", &self.notify.path)
            .env_remove("JOURNAL_STREAM")
            .env_remove("AA_POLICYD_FAULT")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        for (key, value) in env {
            command.env(key, value);
        }
        self.child = Some(command.spawn().expect("start aa-policyd run"));
    }

    /// Kills the daemon with SIGKILL (as `kill -9` would) and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the daemon to die by itself (a fault point), up to 10 s.
    pub fn wait_dead(&mut self) -> bool {
        let Some(child) = self.child.as_mut() else {
            return true;
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                self.child = None;
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Starts the daemon again on the same policy, socket and pin dir, with
    /// `env` (e.g. a fault point), and waits until it says READY again.
    pub fn restart(&mut self, env: &[(&str, &str)]) {
        self.kill9();
        let before = self.ready_count();
        self.spawn(env);
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.ready_count() <= before {
            if Instant::now() > deadline {
                panic!(
                    "the restarted daemon did not send READY=1; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// How many READY=1 messages arrived so far (every reload sends one).
    fn ready_count(&self) -> usize {
        self.notify
            .messages()
            .iter()
            .filter(|m| m.lines().any(|l| l == "READY=1") && m.contains("enforcing"))
            .count()
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self
                .notify
                .messages()
                .iter()
                .any(|m| m.lines().any(|l| l == "READY=1"))
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "daemon did not send READY=1 within 10 s; log:\n{}",
            self.log()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.socket).expect("connect to the daemon")
    }

    pub fn status(&self) -> StatusReport {
        match self.client().request(&Request::Status).expect("status") {
            Response::Status(status) => *status,
            other => panic!("unexpected status reply {other:?}"),
        }
    }

    /// Polls status until `done` holds (5 s), returning the last status.
    pub fn wait_for(&self, what: &str, done: impl Fn(&StatusReport) -> bool) -> StatusReport {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let status = self.status();
            if done(&status) {
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; status: {status:#?}\nlog:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The rule set the kernel maps hold, read straight from the pins (the
    /// daemon holds the pin dir's lock).
    pub fn kernel_rules(&self) -> RuleSet {
        kernel::read_applied(&self.pin_dir)
            .expect("read the pinned maps")
            .rules
    }

    /// Sends SIGTERM and waits for the daemon to exit.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: signalling our own child, not yet reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        if let Err(error) = kernel::unload(&self.pin_dir) {
            eprintln!("cleanup of {} failed: {error}", self.pin_dir.display());
        }
    }
}
