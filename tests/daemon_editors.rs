//! How editors and tools save files, against a real `aa-policyd run`.
//!
//! Why this exists: the daemon watches the policy's directory, not the file,
//! because tools save in very different ways — truncate and write in place,
//! write a temp file and rename it over, unlink and recreate, swap a
//! Kubernetes `..data` symlink, even remove the whole directory. Each test
//! saves the policy one such way and checks that the kernel ends at the
//! saved policy, that only whole, valid versions were ever applied (every
//! applied generation's hash is one of the versions written, and generations
//! advance by one per applied save), that a rejected intermediate state did
//! not advance the generation, and that no reload failed. The daemon's log
//! is the history: it has one line per applied, invalid, refused or failed
//! reload, with its outcome, trigger, generation and policy hash.

mod support;

use std::collections::BTreeSet;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, Instant};

use aa_policyd::control::wire::{Outcome, StatusReport};
use sha2::{Digest, Sha256};
use support::daemon::{Daemon, policy_text, rules_of};

/// The inotify queue limit the kernel copies into each new inotify instance.
const MAX_QUEUED_EVENTS: &str = "/proc/sys/fs/inotify/max_queued_events";

/// Held for writing while `max_queued_events` is lowered, and for reading
/// while any other daemon here creates its watcher: only the rescan test's
/// daemon gets the tiny queue.
static INOTIFY_LIMIT: RwLock<()> = RwLock::new(());

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Starts a daemon on `policy_text("kcmp")` (generation 1).
fn start(name: &str) -> Option<Daemon> {
    let initial = policy_text("kcmp");
    start_laid_out(name, |etc| {
        std::fs::write(etc.join("policy.yaml"), &initial).expect("write the initial policy");
    })
}

/// Starts a daemon on an `etc` dir `setup` lays out, and waits until its
/// watch on that directory is in place.
fn start_laid_out(name: &str, setup: impl FnOnce(&Path)) -> Option<Daemon> {
    let _shared = INOTIFY_LIMIT.read().unwrap_or_else(PoisonError::into_inner);
    let daemon = Daemon::start_with(name, setup, &[])?;
    wait_for_watch(&daemon);
    Some(daemon)
}

/// Waits until the daemon's inotify instance watches something (its
/// `fdinfo` lists an `inotify wd:` line), so no save below can be missed
/// because the watcher thread had not started yet.
fn wait_for_watch(daemon: &Daemon) {
    let proc_dir = PathBuf::from(format!("/proc/{}", daemon.pid()));
    let watching = || {
        let Ok(fds) = std::fs::read_dir(proc_dir.join("fd")) else {
            return false;
        };
        fds.flatten().any(|fd| {
            let inotify = std::fs::read_link(fd.path())
                .is_ok_and(|target| target.as_os_str() == "anon_inode:inotify");
            inotify
                && std::fs::read_to_string(proc_dir.join("fdinfo").join(fd.file_name()))
                    .is_ok_and(|info| info.contains("inotify wd:"))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !watching() {
        assert!(
            Instant::now() < deadline,
            "the daemon watched nothing within 5 s of READY=1; log:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `command` with stdin closed, failing the test if it does not exit
/// successfully within 20 s (then it is killed).
fn run(command: &mut Command) {
    let described = format!("{command:?}");
    let mut output = tempfile::tempfile().expect("temp file for the command's output");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(output.try_clone().expect("output fd"))
        .stderr(output.try_clone().expect("output fd"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {described}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll the command") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{described} did not finish within 20 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut text = String::new();
    output.rewind().expect("rewind the output");
    let _ = output.read_to_string(&mut text);
    assert!(status.success(), "{described} failed ({status}):\n{text}");
}

/// Runs a shell script in `dir`.
fn sh(dir: &Path, script: &str) {
    run(Command::new("sh").arg("-c").arg(script).current_dir(dir));
}

/// The directory holding the policy.
fn etc(daemon: &Daemon) -> PathBuf {
    daemon.policy.parent().expect("etc dir").to_owned()
}

/// Writes `text` to `new.yaml` next to (not inside) the watched directory.
fn stage(daemon: &Daemon, text: &str) -> PathBuf {
    let path = daemon.dir.path().join("new.yaml");
    std::fs::write(&path, text).expect("stage the new policy");
    path
}

/// One reload as the daemon logged it.
#[derive(Debug)]
struct Logged {
    outcome: String,
    generation: u64,
    trigger: String,
    sha256: String,
}

/// The value of ` key=` on a log line (quotes stripped; values read here
/// have no spaces).
fn field(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    let value = line[start..].split_whitespace().next()?;
    Some(value.trim_matches('"').to_owned())
}

/// Every reload the daemon logged (all but quiet `unchanged` ones), in order.
fn logged_reloads(log: &str) -> Vec<Logged> {
    log.lines()
        .filter_map(|line| {
            Some(Logged {
                outcome: field(line, "outcome")?,
                generation: field(line, "generation")?.parse().ok()?,
                trigger: field(line, "trigger")?,
                sha256: field(line, "policy_sha256").unwrap_or_default(),
            })
        })
        .collect()
}

/// What a rejected (invalid) reload on the way is allowed to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Invalid {
    /// The save never leaves an invalid file under the name when a trigger
    /// can fire: the daemon must never even reject one.
    Never,
    /// The save passes through a missing or empty file long enough that the
    /// daemon must see it and reject it (without applying it).
    Seen,
    /// A rapid burst: the daemon may or may not catch an invalid moment.
    Tolerated,
}

struct Expect<'a> {
    /// Every version that was written whole (the startup policy included);
    /// only these may ever be applied.
    versions: &'a [String],
    /// What the kernel must end at.
    final_text: &'a str,
    /// The generation at the end, when the case fixes it.
    generation: Option<u64>,
    invalid: Invalid,
}

/// Waits until status shows `final_text` in force, lets any late trigger
/// run out, then checks the kernel and the whole reload history. Returns
/// the history.
fn assert_history(daemon: &Daemon, expect: &Expect) -> Vec<Logged> {
    let want = sha256_hex(expect.final_text);
    daemon.wait_for("the final policy's hash in status", |s| {
        s.policy_sha256.as_deref() == Some(want.as_str())
    });
    // Longer than the watcher's quiet period and maximum delay together.
    std::thread::sleep(Duration::from_millis(400));
    let status: StatusReport = daemon.status();
    let log = daemon.log();
    let context = format!("status: {status:#?}\nlog:\n{log}");

    assert_eq!(
        daemon.kernel_rules(),
        rules_of(expect.final_text),
        "the kernel must end at the final policy\n{context}"
    );
    assert_eq!(
        status.policy_sha256.as_deref(),
        Some(want.as_str()),
        "a late reload replaced the final policy\n{context}"
    );
    assert!(
        status
            .last_reload
            .as_ref()
            .is_none_or(|r| r.outcome != Outcome::Failed),
        "the last reload failed\n{context}"
    );

    let allowed: BTreeSet<String> = expect.versions.iter().map(|v| sha256_hex(v)).collect();
    let reloads = logged_reloads(&log);
    let mut in_force = 0;
    for reload in &reloads {
        match reload.outcome.as_str() {
            "applied" => {
                assert_eq!(
                    reload.generation,
                    in_force + 1,
                    "each applied save advances the generation by one: {reload:?}\n{context}"
                );
                assert!(
                    allowed.contains(&reload.sha256),
                    "generation {} applied content that was never saved whole: {reload:?}\n{context}",
                    reload.generation
                );
                in_force = reload.generation;
            }
            "invalid" => assert_eq!(
                reload.generation, in_force,
                "a rejected save must leave the generation in force: {reload:?}\n{context}"
            ),
            "unchanged" => assert_eq!(reload.generation, in_force, "{reload:?}\n{context}"),
            other => panic!("unexpected reload outcome {other}: {reload:?}\n{context}"),
        }
    }
    assert_eq!(
        reloads
            .first()
            .map(|r| (r.outcome.as_str(), r.trigger.as_str())),
        Some(("applied", "startup")),
        "the history starts with the startup policy\n{context}"
    );
    assert_eq!(
        status.generation, in_force,
        "status and log agree on the generation\n{context}"
    );
    if let Some(generation) = expect.generation {
        assert_eq!(
            status.generation,
            generation,
            "exactly {} valid change(s) happened\n{context}",
            generation - 1
        );
    }
    let invalid = reloads.iter().filter(|r| r.outcome == "invalid").count();
    match expect.invalid {
        Invalid::Never => assert_eq!(
            invalid, 0,
            "the daemon read the policy while the save was incomplete\n{context}"
        ),
        Invalid::Seen => assert!(
            invalid >= 1,
            "the daemon never saw (and rejected) the invalid state in between\n{context}"
        ),
        Invalid::Tolerated => {
            if invalid > 0 {
                eprintln!("note: {invalid} invalid intermediate state(s) seen and rejected");
            }
        }
    }
    reloads
}

/// The common case: one save from `kcmp` to `syslog`, applied once.
fn assert_applied_once(daemon: &Daemon, invalid: Invalid) {
    assert_history(
        daemon,
        &Expect {
            versions: &[policy_text("kcmp"), policy_text("syslog")],
            final_text: &policy_text("syslog"),
            generation: Some(2),
            invalid,
        },
    );
}

/// Whether vim can be used; without it the test skips loudly, or fails
/// when `AA_REQUIRE_KERNEL=1` (CI must run every case).
fn vim_available(test: &str) -> bool {
    let found = Command::new("vim")
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        if std::env::var("AA_REQUIRE_KERNEL").as_deref() == Ok("1") {
            panic!(
                "{test}: vim is not installed (apt-get install -y vim) and AA_REQUIRE_KERNEL=1 forbids skipping"
            );
        }
        eprintln!(
            "SKIPPED {test}: vim is not installed (set AA_REQUIRE_KERNEL=1 to make this a failure)"
        );
    }
    found
}

/// Saves `kcmp` → `syslog` with vim in silent Ex mode (no terminal, no
/// swap file, no viminfo), with `settings` applied before the edit.
/// `backupskip` is emptied because its default skips backups under /tmp,
/// where these tests' files live.
fn vim_save(daemon: &Daemon, settings: &[&str]) {
    let mut command = Command::new("vim");
    command.args(["-u", "DEFAULTS", "-i", "NONE", "-n", "-es"]);
    command.args(["-c", "set backupskip="]);
    for setting in settings {
        command.arg("-c").arg(setting);
    }
    command.args(["-c", "%s/kcmp/syslog/", "-c", "wq", "policy.yaml"]);
    run(command.current_dir(etc(daemon)));
}

fn inode_of(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).expect("stat the policy").ino()
}

#[test]
fn a_shell_redirect_overwrite_is_applied_once() {
    let Some(daemon) = start("editor_redirect") else {
        return;
    };
    stage(&daemon, &policy_text("syslog"));
    sh(&etc(&daemon), "cat ../new.yaml > policy.yaml");
    assert_applied_once(&daemon, Invalid::Never);
}

#[test]
fn a_write_paused_midway_is_applied_once_and_never_half() {
    let Some(daemon) = start("editor_two_chunks") else {
        return;
    };
    let text = policy_text("syslog");
    let (first, second) = text.split_at(text.len() / 2);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&daemon.policy)
        .expect("open the policy for writing");
    file.write_all(first.as_bytes())
        .expect("write the first half");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        daemon.status().generation,
        1,
        "nothing may be applied while the file is still open"
    );
    file.write_all(second.as_bytes())
        .expect("write the second half");
    drop(file);
    assert_applied_once(&daemon, Invalid::Never);
}

#[test]
fn truncate_then_append_never_applies_the_empty_file() {
    let Some(daemon) = start("editor_truncate_append") else {
        return;
    };
    stage(&daemon, &policy_text("syslog"));
    let etc = etc(&daemon);
    sh(&etc, ": > policy.yaml");
    std::thread::sleep(Duration::from_millis(300));
    let between = daemon.status();
    assert_eq!(between.generation, 1, "the empty file was applied");
    assert_eq!(daemon.kernel_rules(), rules_of(&policy_text("kcmp")));
    sh(&etc, "cat ../new.yaml >> policy.yaml");
    assert_applied_once(&daemon, Invalid::Seen);
}

#[test]
fn a_temp_file_moved_over_the_policy_is_applied_once() {
    let Some(daemon) = start("editor_mv") else {
        return;
    };
    let etc = etc(&daemon);
    std::fs::write(etc.join(".policy.yaml.tmp"), policy_text("syslog")).expect("write temp");
    sh(&etc, "mv .policy.yaml.tmp policy.yaml");
    assert_applied_once(&daemon, Invalid::Never);
}

#[test]
fn sed_in_place_save_is_applied_once() {
    let Some(daemon) = start("editor_sed") else {
        return;
    };
    sh(&etc(&daemon), "sed -i 's/kcmp/syslog/' policy.yaml");
    assert_applied_once(&daemon, Invalid::Never);
}

#[test]
fn vim_save_with_default_settings_is_applied_once() {
    if !vim_available("vim_default") {
        return;
    }
    let Some(daemon) = start("editor_vim_default") else {
        return;
    };
    vim_save(&daemon, &[]);
    assert_applied_once(&daemon, Invalid::Never);
}

#[test]
fn vim_save_with_backupcopy_yes_is_applied_once() {
    if !vim_available("vim_backupcopy_yes") {
        return;
    }
    let Some(daemon) = start("editor_vim_bcy") else {
        return;
    };
    let before = inode_of(&daemon.policy);
    vim_save(&daemon, &["set backupcopy=yes"]);
    assert_eq!(
        inode_of(&daemon.policy),
        before,
        "backupcopy=yes writes in place"
    );
    assert_applied_once(&daemon, Invalid::Never);
}

#[test]
fn vim_save_with_backupcopy_no_is_applied_once() {
    if !vim_available("vim_backupcopy_no") {
        return;
    }
    let Some(daemon) = start("editor_vim_bcn") else {
        return;
    };
    let before = inode_of(&daemon.policy);
    vim_save(&daemon, &["set backupcopy=no"]);
    assert_ne!(
        inode_of(&daemon.policy),
        before,
        "backupcopy=no renames a new file in"
    );
    assert_applied_once(&daemon, Invalid::Never);
}

#[test]
fn install_over_the_policy_is_applied_once() {
    let Some(daemon) = start("editor_install") else {
        return;
    };
    stage(&daemon, &policy_text("syslog"));
    sh(&etc(&daemon), "install -m 0644 ../new.yaml policy.yaml");
    assert_applied_once(&daemon, Invalid::Never);
}

#[test]
fn cp_over_the_policy_is_applied_once() {
    let Some(daemon) = start("editor_cp") else {
        return;
    };
    stage(&daemon, &policy_text("syslog"));
    sh(&etc(&daemon), "cp ../new.yaml policy.yaml");
    assert_applied_once(&daemon, Invalid::Never);
}

#[test]
fn delete_then_recreate_keeps_the_generation_until_the_new_file_exists() {
    let Some(daemon) = start("editor_rm_recreate") else {
        return;
    };
    sh(&etc(&daemon), "rm policy.yaml");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(daemon.status().generation, 1, "a missing file was applied");
    assert_eq!(daemon.kernel_rules(), rules_of(&policy_text("kcmp")));
    std::fs::write(&daemon.policy, policy_text("syslog")).expect("recreate the policy");
    assert_applied_once(&daemon, Invalid::Seen);
}

#[test]
fn a_configmap_data_symlink_swap_is_applied_once() {
    let layout = |etc: &Path| {
        std::fs::create_dir(etc.join("..2024_01")).expect("mkdir ..2024_01");
        std::fs::write(etc.join("..2024_01/policy.yaml"), policy_text("kcmp"))
            .expect("write ..2024_01/policy.yaml");
        std::os::unix::fs::symlink("..2024_01", etc.join("..data")).expect("link ..data");
        std::os::unix::fs::symlink("..data/policy.yaml", etc.join("policy.yaml"))
            .expect("link policy.yaml");
    };
    let Some(daemon) = start_laid_out("editor_configmap", layout) else {
        return;
    };
    // What kubelet's atomic writer does.
    let etc = etc(&daemon);
    std::fs::create_dir(etc.join("..2024_02")).expect("mkdir ..2024_02");
    std::fs::write(etc.join("..2024_02/policy.yaml"), policy_text("syslog"))
        .expect("write ..2024_02/policy.yaml");
    std::os::unix::fs::symlink("..2024_02", etc.join("..data_tmp")).expect("link ..data_tmp");
    std::fs::rename(etc.join("..data_tmp"), etc.join("..data")).expect("swap ..data");
    std::fs::remove_dir_all(etc.join("..2024_01")).expect("remove ..2024_01");
    assert_applied_once(&daemon, Invalid::Never);
}

#[test]
fn a_removed_and_recreated_directory_is_watched_again() {
    let Some(daemon) = start("editor_dir_recreate") else {
        return;
    };
    let etc = etc(&daemon);
    sh(daemon.dir.path(), "rm -rf etc");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(daemon.status().generation, 1, "a missing file was applied");
    std::fs::create_dir(&etc).expect("mkdir etc");
    std::fs::write(&daemon.policy, policy_text("syslog")).expect("write the new policy");
    assert_applied_once(&daemon, Invalid::Seen);
    assert!(
        daemon
            .log()
            .contains(&format!("watching {} again", etc.display())),
        "the log says the directory is watched again:\n{}",
        daemon.log()
    );
}

/// A deploy script's `rm -rf etc && mkdir etc` takes well under the
/// watcher's 100 ms identity tick, and ext4 hands the new directory the
/// freed inode number: (device, inode) alone cannot tell the directories
/// apart, so the dead watch must be noticed some other way.
#[test]
fn a_directory_recreated_within_one_tick_with_the_same_inode_is_watched_again() {
    use std::os::unix::fs::MetadataExt;
    let Some(daemon) = start("editor_dir_same_inode") else {
        return;
    };
    let etc = etc(&daemon);
    let inode = |dir: &Path| std::fs::metadata(dir).expect("stat etc").ino();
    let original = inode(&etc);
    // ext4 hands out the lowest free inode of the group: when other tests
    // have freed lower ones, park each directory that got one (outside the
    // watched directory) until mkdir hands out the original number again.
    let started = Instant::now();
    std::fs::remove_dir_all(&etc).expect("rm -rf etc");
    let mut tries = 0;
    loop {
        tries += 1;
        std::fs::create_dir(&etc).expect("mkdir etc");
        if inode(&etc) == original || tries == 1000 {
            break;
        }
        std::fs::rename(&etc, daemon.dir.path().join(format!("parked-{tries}")))
            .expect("park a directory");
    }
    let took = started.elapsed();
    if inode(&etc) != original {
        eprintln!(
            "note: the file system did not reuse inode {original}; this run cannot show the bug"
        );
    }
    // The removal's own event makes the daemon read a missing file.
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(&daemon.policy, policy_text("syslog")).expect("write the new policy");
    let want = sha256_hex(&policy_text("syslog"));
    let applied =
        support::eventually(|| daemon.status().policy_sha256.as_deref() == Some(want.as_str()));
    assert!(
        applied,
        "etc was removed and recreated with the same inode {original} ({tries} mkdir(s) in {took:?}, within the 100 ms tick); \
         the daemon kept its dead watch: 3 s after the save it still had not applied it (only the 60 s periodic check would); \
         status: {:#?}\nlog:\n{}",
        daemon.status(),
        daemon.log()
    );
    assert_applied_once(&daemon, Invalid::Seen);
}

#[test]
fn chmod_and_touch_do_not_reload() {
    let Some(daemon) = start("editor_chmod_touch") else {
        return;
    };
    sh(&etc(&daemon), "chmod 600 policy.yaml && touch policy.yaml");
    std::thread::sleep(Duration::from_millis(500));
    let status = daemon.status();
    assert!(
        status
            .last_reload
            .as_ref()
            .is_none_or(|r| r.outcome == Outcome::Unchanged),
        "a metadata change may at most be an unchanged reload: {status:#?}"
    );
    assert_history(
        &daemon,
        &Expect {
            versions: &[policy_text("kcmp")],
            final_text: &policy_text("kcmp"),
            generation: Some(1),
            invalid: Invalid::Never,
        },
    );
}

/// Restores `max_queued_events` when dropped, also on panic.
struct QueueLimit {
    saved: String,
}

impl QueueLimit {
    fn lower_to(events: u32) -> QueueLimit {
        let saved = std::fs::read_to_string(MAX_QUEUED_EVENTS).expect("read max_queued_events");
        std::fs::write(MAX_QUEUED_EVENTS, events.to_string()).expect("lower max_queued_events");
        QueueLimit { saved }
    }
}

impl Drop for QueueLimit {
    fn drop(&mut self) {
        if let Err(error) = std::fs::write(MAX_QUEUED_EVENTS, self.saved.trim()) {
            eprintln!(
                "could not restore {MAX_QUEUED_EVENTS} to {}: {error}",
                self.saved.trim()
            );
        }
    }
}

/// A daemon stopped with SIGSTOP; continued (SIGCONT) when dropped, also on
/// panic.
struct Paused {
    pid: u32,
}

impl Paused {
    fn stop(daemon: &Daemon) -> Paused {
        let pid = daemon.pid();
        // SAFETY: signalling our own child, not yet reaped.
        assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) }, 0);
        let paused = Paused { pid };
        let all_stopped = || {
            std::fs::read_dir(format!("/proc/{pid}/task"))
                .expect("list the daemon's threads")
                .flatten()
                .all(|task| {
                    std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
                        stat.rsplit_once(')')
                            .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
                    })
                })
        };
        assert!(support::eventually(all_stopped), "the daemon did not stop");
        paused
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        // SAFETY: our own child, not yet reaped (the Daemon outlives this).
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGCONT) };
    }
}

#[test]
fn an_inotify_overflow_forces_a_reload_that_applies_the_change() {
    // Decide skip-or-fail before touching the sysctl.
    if !support::kernel_available("editor_rescan") {
        return;
    }
    let daemon = {
        let _exclusive = INOTIFY_LIMIT
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let _limit = QueueLimit::lower_to(16);
        let Some(daemon) = Daemon::start("editor_rescan", &policy_text("kcmp"), &[]) else {
            return;
        };
        wait_for_watch(&daemon);
        daemon
        // The limit is restored here: the daemon's instance keeps 16.
    };
    let etc = etc(&daemon);
    {
        // Stopping the daemon makes the overflow certain rather than a race
        // against its watcher thread: its queue fills with the first 16
        // events, the rest (the policy save included) are lost, and only
        // the overflow marker tells it to look again.
        let _paused = Paused::stop(&daemon);
        for i in 0..500 {
            std::fs::write(etc.join(format!("noise-{i}")), b"x").expect("create a noise file");
        }
        for i in 0..500 {
            std::fs::remove_file(etc.join(format!("noise-{i}"))).expect("remove a noise file");
        }
        std::fs::write(&daemon.policy, policy_text("syslog")).expect("save the new policy");
    }
    let reloads = {
        let expect = Expect {
            versions: &[policy_text("kcmp"), policy_text("syslog")],
            final_text: &policy_text("syslog"),
            generation: Some(2),
            invalid: Invalid::Never,
        };
        assert_history(&daemon, &expect)
    };
    let applied = reloads
        .iter()
        .find(|r| r.outcome == "applied" && r.generation == 2)
        .expect("generation 2 in the log");
    assert_eq!(
        applied.trigger,
        "rescan",
        "the save's own events were lost, so only the overflow can have applied it; log:\n{}",
        daemon.log()
    );
    let leftovers: Vec<_> = std::fs::read_dir(&etc)
        .expect("list etc")
        .flatten()
        .map(|e| e.file_name())
        .filter(|name| name.to_string_lossy().starts_with("noise-"))
        .collect();
    assert!(leftovers.is_empty(), "noise files left: {leftovers:?}");
}

#[test]
fn the_last_of_100_rapid_saves_is_what_is_applied() {
    let Some(daemon) = start("editor_rapid") else {
        return;
    };
    // Index 99 is syslog: the last save.
    let versions: Vec<String> = ["kcmp", "acct", "swapon", "quotactl", "syslog"]
        .into_iter()
        .map(policy_text)
        .collect();
    for i in 0..100 {
        std::fs::write(&daemon.policy, &versions[i % versions.len()]).expect("save");
    }
    let reloads = assert_history(
        &daemon,
        &Expect {
            versions: &versions,
            final_text: &policy_text("syslog"),
            generation: None,
            invalid: Invalid::Tolerated,
        },
    );
    let applied = reloads.iter().filter(|r| r.outcome == "applied").count();
    assert!(
        (2..=101).contains(&applied),
        "{applied} generations applied for 100 saves"
    );
    eprintln!("100 rapid saves: {applied} generation(s) applied");
}
