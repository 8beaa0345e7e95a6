//! Crash consistency and hostile inputs, through the real daemon and kernel:
//! `kill -9` inside an apply, a confine and a release (deterministic fault
//! points of the debug build) and at random moments during reloads, each
//! followed by a restart; then a zombie, a FIFO, descriptor exhaustion,
//! unstoppable targets, a confine raced by an accomplice's SIGCONTs, a
//! renamed pin dir, a second daemon on the same socket, and drop counts
//! after a restart.
//!
//! After every kill and restart: the kernel's active slot is one whole
//! generation that was applied, the next reload brings both slots to the
//! file, no target is left stopped, and no mark lacks its registry entry.
//! `AA_FAULT_KILLS` sets the number of random kills (the documented long
//! run uses 300). Run as root; `AA_REQUIRE_KERNEL=1` turns a skip into a
//! failure.

mod support;

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aa_policyd::control::wire::{Request, Response};
use aa_policyd::loader::kernel::{self, MarkReader};
use aa_policyd::ruleset::RuleSet;
use support::Plain;
use support::daemon::{Daemon, rules_of};

/// Three policies that differ in syscalls, egress and path rules.
const POLICIES: [&str; 3] = [
    "syscalls:\n  allow: [\"@system-service\", kcmp]\nnetwork:\n  allowlist: [127.0.0.0/8]\nfilesystem:\n  deny: [/srv/a]\n",
    "syscalls:\n  allow: [\"@system-service\", syslog]\nnetwork:\n  allowlist: [127.0.0.0/8, '10.1.0.0/16:443', 10.2.0.0/16, '[2001:db8::]/48']\nfilesystem:\n  deny: [/srv/b, /etc/gshadow]\n",
    "syscalls:\n  allow: [\"@system-service\", acct]\nnetwork:\n  allowlist: [127.0.0.0/8, 10.3.0.0/16, '[2001:db8:1::]/48', '192.0.2.7:8443']\nfilesystem:\n  deny: [/var/run/secrets, /srv/c]\n  read:\n    allow: [/usr, /srv]\n",
];

fn all_rules() -> Vec<RuleSet> {
    POLICIES.iter().map(|text| rules_of(text)).collect()
}

/// Writes a save the way most editors do: a new file renamed over the name.
fn save(daemon: &Daemon, text: &str) {
    let temp = daemon.policy.with_extension("tmp");
    std::fs::write(&temp, text).expect("write the new policy");
    std::fs::rename(&temp, &daemon.policy).expect("rename over the policy");
}

/// What the kernel holds after a kill: whether the two slots differed (the
/// kill landed inside an apply) — and it asserts the active slot is one of
/// `candidates`, whole.
fn check_after_kill(daemon: &Daemon, candidates: &[RuleSet], when: &str) -> bool {
    let (slots, active) = kernel::read_slots(&daemon.pin_dir).expect("read both slots");
    let in_force = &slots[active as usize].rules;
    assert!(
        candidates.iter().any(|c| c == in_force),
        "{when}: the active slot is no whole policy: {in_force:#?}"
    );
    slots[0].rules != slots[1].rules
}

/// After a restart: the kernel holds `expected` in the active slot and the
/// same in the inactive one.
fn check_after_restart(daemon: &Daemon, expected: &RuleSet, when: &str) {
    let (slots, active) = kernel::read_slots(&daemon.pin_dir).expect("read both slots");
    assert_eq!(
        &slots[active as usize].rules, expected,
        "{when}: the file is in force"
    );
    assert_eq!(
        slots[0].rules, slots[1].rules,
        "{when}: both slots hold it after the first reload"
    );
}

/// A process confined for the whole test: it must stay confined, marked
/// on every thread and running (never left stopped) across every kill.
struct Keeper {
    process: Plain,
}

impl Keeper {
    fn start(daemon: &Daemon) -> Keeper {
        let process = Plain(
            Command::new("python3")
                .args([
                    "-c",
                    // Waits until the test's drop guard kills it: the long
                    // form runs for far longer than any fixed sleep.
                    "import threading\nfor _ in range(2): threading.Thread(target=threading.Event().wait, daemon=True).start()\nthreading.Event().wait()\n",
                ])
                .spawn()
                .expect("start the keeper"),
        );
        let pid = process.0.id();
        assert!(support::eventually(|| threads(pid).len() >= 3));
        match daemon.client().request(&Request::Confine { pid }) {
            Ok(Response::Done) => {}
            other => panic!("confine the keeper: {other:?}"),
        }
        Keeper { process }
    }

    fn pid(&self) -> u32 {
        self.process.0.id()
    }

    fn check(&mut self, daemon: &Daemon, when: &str) {
        let pid = self.pid();
        assert!(
            matches!(self.process.0.try_wait(), Ok(None)),
            "{when}: the keeper died"
        );
        assert!(!stopped(pid), "{when}: the keeper was left stopped");
        assert!(
            daemon.status().confined.contains(&pid),
            "{when}: the keeper left the registry"
        );
        let marks = MarkReader::open(&daemon.pin_dir).expect("marks");
        for tid in threads(pid) {
            assert!(marked(&marks, tid), "{when}: thread {tid} lost its mark");
        }
    }
}

/// Every marked thread on the machine belongs to a process in the
/// registry: a mark without its entry would be killed on an empty
/// allowlist that the lock-out guard let through.
fn check_every_mark_is_registered(daemon: &Daemon, when: &str) {
    let confined = daemon.status().confined;
    let marks = MarkReader::open(&daemon.pin_dir).expect("marks");
    for entry in std::fs::read_dir("/proc").expect("/proc") {
        let Some(pid) = entry
            .ok()
            .and_then(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        else {
            continue;
        };
        for tid in threads(pid) {
            if marked(&marks, tid) {
                assert!(
                    confined.contains(&pid),
                    "{when}: thread {tid} of pid {pid} is marked but not in the registry {confined:?}"
                );
            }
        }
    }
}

fn threads(pid: u32) -> Vec<u32> {
    aa_policyd::loader::process::threads(pid).unwrap_or_default()
}

fn stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with(['T', 't']))
        })
        .unwrap_or(false)
}

fn marked(marks: &MarkReader, tid: u32) -> bool {
    // SAFETY: plain syscall; the descriptor is ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, tid as libc::pid_t, libc::O_EXCL) };
    if fd < 0 {
        return false;
    }
    // SAFETY: the kernel just gave us this descriptor.
    let pidfd: OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd as i32) };
    marks.is_marked(&pidfd).expect("look up a mark")
}

#[test]
fn a_kill_at_any_point_of_an_apply_leaves_one_whole_generation_and_the_next_reload_the_file() {
    let Some(mut daemon) = Daemon::start("fault_apply", POLICIES[0], &[]) else {
        return;
    };
    let rules = all_rules();
    let mut keeper = Keeper::start(&daemon);
    let points = [
        "apply.entry:1",
        "apply.entry:4",
        "apply.before-flip:1",
        "apply.flipped:1",
        "apply.align:1",
        "apply.align:3",
    ];
    let mut in_force = 0;
    let mut mid_apply = 0;
    for point in points {
        let next = (in_force + 1) % POLICIES.len();
        daemon.restart(&[("AA_POLICYD_FAULT", point)]);
        save(&daemon, POLICIES[next]);
        assert!(daemon.wait_dead(), "{point} was never reached");
        if check_after_kill(
            &daemon,
            &[rules[in_force].clone(), rules[next].clone()],
            point,
        ) {
            mid_apply += 1;
        }
        daemon.restart(&[]);
        check_after_restart(&daemon, &rules[next], point);
        keeper.check(&daemon, point);
        check_every_mark_is_registered(&daemon, point);
        in_force = next;
    }
    eprintln!(
        "{} kills at fault points, {mid_apply} inside an apply",
        points.len()
    );
    assert!(
        mid_apply >= 4,
        "the points inside an apply left the slots disagreeing"
    );
}

#[test]
fn a_kill_at_any_point_of_a_confine_leaves_no_target_stopped_and_no_half_confined_process() {
    let Some(mut daemon) = Daemon::start("fault_confine", POLICIES[0], &[]) else {
        return;
    };
    for point in [
        "confine.recorded",
        "confine.registered",
        "confine.thread:1",
        "confine.thread:2",
        "confine.marked",
    ] {
        daemon.restart(&[("AA_POLICYD_FAULT", point)]);
        let target = threaded_target();
        let pid = target.0.id();
        let answer = daemon.client().request(&Request::Confine { pid });
        assert!(
            answer.is_err(),
            "{point}: the confine was cut short: {answer:?}"
        );
        assert!(daemon.wait_dead(), "{point} was never reached");
        daemon.restart(&[]);
        // The client was told it failed: the process is as before.
        check_left_unconfined(&daemon, pid, point, "undid the confine of pid");
        check_every_mark_is_registered(&daemon, point);
    }
}

/// After a kill mid-confine or mid-release and a restart: the target runs
/// (not left stopped), no thread of it is marked, it is out of the
/// registry, and the restarted daemon said what it finished (`said` plus
/// the pid).
fn check_left_unconfined(daemon: &Daemon, pid: u32, point: &str, said: &str) {
    assert!(!stopped(pid), "{point}: the target was left stopped");
    let marks = MarkReader::open(&daemon.pin_dir).expect("marks");
    for tid in threads(pid) {
        assert!(!marked(&marks, tid), "{point}: thread {tid} kept a mark");
    }
    assert!(
        !daemon.status().confined.contains(&pid),
        "{point}: the target stayed in the registry"
    );
    assert!(
        daemon.log().contains(&format!("{said} {pid}")),
        "{point}: the restarted daemon did not say \"{said} {pid}\""
    );
}

/// Starts a target with three sleeping threads.
fn threaded_target() -> Plain {
    let target = Plain(
        Command::new("python3")
            .args([
                "-c",
                "import threading, time\nfor _ in range(2): threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\ntime.sleep(60)\n",
            ])
            .spawn()
            .expect("start the target"),
    );
    let pid = target.0.id();
    assert!(support::eventually(|| threads(pid).len() >= 3));
    target
}

#[test]
fn a_kill_at_any_point_of_a_release_leaves_the_target_running_and_unmarked() {
    let Some(mut daemon) = Daemon::start("fault_release", POLICIES[0], &[]) else {
        return;
    };
    for point in ["release.recorded", "release.thread:2", "release.unmarked"] {
        daemon.restart(&[]);
        let target = threaded_target();
        let pid = target.0.id();
        match daemon.client().request(&Request::Confine { pid }) {
            Ok(Response::Done) => {}
            other => panic!("{point}: confine the target: {other:?}"),
        }
        daemon.restart(&[("AA_POLICYD_FAULT", point)]);
        let answer = daemon.client().request(&Request::Release { pid });
        assert!(
            answer.is_err(),
            "{point}: the release was cut short: {answer:?}"
        );
        assert!(daemon.wait_dead(), "{point} was never reached");
        daemon.restart(&[]);
        // The release was asked for: the restarted daemon finishes it.
        check_left_unconfined(&daemon, pid, point, "finished the release of pid");
        check_every_mark_is_registered(&daemon, point);
    }
}

/// Starts the escape helper in `mode` as the target, and an accomplice
/// that keeps continuing it (SIGCONT), and lets both get going.
fn with_accomplice(helper: &Path, mode: &[&str]) -> (Plain, Plain) {
    let target = Plain(
        Command::new(helper)
            .args(mode)
            .stdout(Stdio::null())
            .spawn()
            .expect("start the target"),
    );
    let accomplice = Plain(
        Command::new(helper)
            .args(["cont", &target.0.id().to_string()])
            .spawn()
            .expect("start the accomplice"),
    );
    std::thread::sleep(Duration::from_millis(100));
    (target, accomplice)
}

/// An accomplice continues the target (SIGCONT) while the daemon holds it
/// stopped, and the target's threads keep creating threads: a thread made
/// by a thread not marked yet is unmarked, and so is every thread after it
/// in its chain. After a confine that succeeds, every thread must carry
/// the mark.
#[test]
fn a_confine_raced_by_sigcont_leaves_no_thread_unmarked() {
    let Some(helper) = support::escape_helper("sigcont_race") else {
        return;
    };
    let Some(daemon) = Daemon::start("sigcont_race", POLICIES[0], &[]) else {
        return;
    };
    let (mut confined, mut refused) = (0, 0);
    for round in 0..12 {
        let (target, _accomplice) = with_accomplice(&helper, &["relay", "4"]);
        let pid = target.0.id();
        match daemon.client().request(&Request::Confine { pid }) {
            Ok(Response::Done) => confined += 1,
            Ok(other) => panic!("round {round}: {other:?}"),
            Err(error) => {
                refused += 1;
                eprintln!("round {round}: confine refused: {error}");
                continue;
            }
        }
        // A new thread is listed a moment before its creation hook marks
        // it, so one unmarked sighting proves nothing; an unmarked chain
        // shows up in nearly every listing.
        let marks = MarkReader::open(&daemon.pin_dir).expect("marks");
        let (mut listings, mut unmarked_listings) = (0, 0);
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(300) {
            listings += 1;
            let unmarked = threads(pid).into_iter().any(|tid| {
                !marked(&marks, tid)
                    && std::path::Path::new(&format!("/proc/{pid}/task/{tid}")).exists()
            });
            if unmarked {
                unmarked_listings += 1;
            }
        }
        assert!(
            unmarked_listings * 10 < listings,
            "round {round}: {unmarked_listings} of {listings} listings of the confined relay had an unmarked thread"
        );
    }
    eprintln!("{confined} confines raced by SIGCONT, {refused} refused, no thread left unmarked");
    assert_eq!(refused, 0, "the accomplice kept the confine from happening");
}

/// Clock ticks since boot, as `/proc/PID/stat` counts a process's start.
fn boot_ticks() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) };
    // SAFETY: plain sysconf.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    now.tv_sec as u64 * hz + now.tv_nsec as u64 * hz / 1_000_000_000
}

/// The live children of `parent`, with their start time in boot ticks.
fn children_of(parent: u32) -> Vec<(u32, u64)> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        // Fields after the name: state(3) ppid(4) ... starttime(22).
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ppid = fields.get(1).and_then(|f| f.parse::<u32>().ok());
        let start = fields.get(19).and_then(|f| f.parse::<u64>().ok());
        if let (Some(ppid), Some(start), Some(state)) = (ppid, start, fields.first())
            && ppid == parent
            && *state != "Z"
        {
            children.push((pid, start));
        }
    }
    children
}

/// While an accomplice keeps the target from staying stopped, the confine
/// takes up to the stop timeout (0.5 s); the target's threads fork all
/// along. A child forked by a thread not marked yet was an unconfined
/// process. The leader is now marked before the stop, and a new task
/// inherits its creator's leader's mark: every child born after the
/// leader's mark is seen (a tick later: start times count in ticks) is
/// marked, and the leader is marked well before the confine returns (it
/// waited out the stop after the mark, not before it). Times are measured
/// against each other, not against a clock budget, so a loaded machine
/// does not fail it.
#[test]
fn children_forked_while_a_confine_is_held_up_are_confined() {
    let Some(helper) = support::escape_helper("fork_window") else {
        return;
    };
    let Some(daemon) = Daemon::start("fork_window", POLICIES[0], &[]) else {
        return;
    };
    let marks = MarkReader::open(&daemon.pin_dir).expect("marks");
    let mut marked_before_the_wait = 0;
    for round in 0..3 {
        let (target, _accomplice) = with_accomplice(&helper, &["forker", "2"]);
        let pid = target.0.id();
        let (answer, leader_marked) = std::thread::scope(|scope| {
            let confine = scope.spawn(|| daemon.client().request(&Request::Confine { pid }));
            let mut seen = None;
            while seen.is_none() && !confine.is_finished() {
                if marked(&marks, pid) {
                    seen = Some(boot_ticks());
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            (confine.join().expect("the confine thread"), seen)
        });
        let returned = boot_ticks();
        match answer {
            Ok(Response::Done) => {}
            other => panic!("round {round}: {other:?}"),
        }
        let Some(leader_marked) = leader_marked else {
            panic!("round {round}: the leader was not marked before the confine returned");
        };
        if returned >= leader_marked + 20 {
            marked_before_the_wait += 1;
        }
        let children: Vec<(u32, bool)> = children_of(pid)
            .into_iter()
            .filter(|&(_, start)| start > leader_marked)
            .map(|(child, _)| (child, marked(&marks, child)))
            .filter(|&(child, _)| Path::new(&format!("/proc/{child}")).exists())
            .collect();
        let unmarked: Vec<u32> = children.iter().filter(|c| !c.1).map(|c| c.0).collect();
        assert!(
            children.len() > 50,
            "round {round}: only {} children after the leader's mark",
            children.len()
        );
        assert!(
            unmarked.is_empty(),
            "round {round}: children forked after the leader's mark run unconfined: {unmarked:?}"
        );
    }
    assert!(
        marked_before_the_wait > 0,
        "in no round was the leader marked before the stop was waited out"
    );
}

/// A thread not marked yet execs while the confine is under way: the exec
/// hands it the process's PID and leader role, and the leader's mark stays
/// with the old leader. The new image (a forker) must be confined from its
/// first instruction: every child it forks is marked.
#[test]
fn a_thread_that_execs_during_a_confine_is_confined_with_what_it_forks() {
    let Some(helper) = support::escape_helper("exec_during_confine") else {
        return;
    };
    let Some(daemon) = Daemon::start("exec_during_confine", POLICIES[0], &[]) else {
        return;
    };
    let marks = MarkReader::open(&daemon.pin_dir).expect("marks");
    for round in 0..3 {
        let trigger = daemon.dir.path().join(format!("exec-{round}"));
        let trigger_arg = trigger.to_string_lossy().into_owned();
        let (target, _accomplice) = with_accomplice(&helper, &["exec-on", &trigger_arg]);
        let pid = target.0.id();
        let answer = std::thread::scope(|scope| {
            let confine = scope.spawn(|| daemon.client().request(&Request::Confine { pid }));
            // Right after the leader's mark, while the stop is still
            // awaited (the accomplice makes that last the stop timeout).
            assert!(
                support::eventually(|| marked(&marks, pid)),
                "round {round}: the leader was never marked"
            );
            std::fs::write(&trigger, b"").expect("trigger the exec");
            confine.join().expect("the confine thread")
        });
        match answer {
            Ok(Response::Done) => {}
            other => panic!("round {round}: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(200));
        let children = children_of(pid);
        let unmarked: Vec<u32> = children
            .iter()
            .map(|&(child, _)| child)
            .filter(|&child| {
                !marked(&marks, child) && Path::new(&format!("/proc/{child}")).exists()
            })
            .collect();
        assert!(
            children.len() > 20,
            "round {round}: the new image forked {} children",
            children.len()
        );
        assert!(
            unmarked.is_empty(),
            "round {round}: {} of {} children of the exec'd image run unconfined",
            unmarked.len(),
            children.len()
        );
    }
}

/// A process whose main thread exited alone is a zombie to `ps` but runs
/// on in its other threads: refusing it as exited made any process immune
/// to `confine`. It is confined, and what its threads fork after that is.
#[test]
fn a_process_whose_main_thread_exited_is_still_confined() {
    let Some(helper) = support::escape_helper("zombie_leader") else {
        return;
    };
    let Some(daemon) = Daemon::start("zombie_leader", POLICIES[0], &[]) else {
        return;
    };
    let target = Plain(
        Command::new(&helper)
            .arg("zombie-leader")
            .stdout(Stdio::null())
            .spawn()
            .expect("start the target"),
    );
    let pid = target.0.id();
    assert!(
        support::eventually(|| main_thread_state(pid) == Some('Z') && threads(pid).len() >= 3),
        "the main thread never exited alone"
    );
    match daemon.client().request(&Request::Confine { pid }) {
        Ok(Response::Done) => {}
        other => panic!("confine: {other:?}"),
    }
    let done = boot_ticks();
    assert!(daemon.status().confined.contains(&pid));
    std::thread::sleep(Duration::from_millis(200));
    let marks = MarkReader::open(&daemon.pin_dir).expect("marks");
    let later: Vec<u32> = children_of(pid)
        .into_iter()
        .filter(|&(_, start)| start > done)
        .map(|(child, _)| child)
        .collect();
    assert!(
        later.len() > 20,
        "only {} children after the confine",
        later.len()
    );
    let unmarked: Vec<&u32> = later
        .iter()
        .filter(|&&child| !marked(&marks, child) && Path::new(&format!("/proc/{child}")).exists())
        .collect();
    assert!(unmarked.is_empty(), "children run unconfined: {unmarked:?}");
}

/// The state letter of `pid`'s main thread.
fn main_thread_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// A process confined, killed, and its number given to a new process at
/// once: the number's old pidfd, remembered from the first confine, must
/// not make the new process look like it exited mid-confine.
#[test]
fn a_reused_pid_can_be_confined_again() {
    let Some(helper) = support::escape_helper("pid_reuse") else {
        return;
    };
    let Some(daemon) = Daemon::start("pid_reuse", POLICIES[0], &[]) else {
        return;
    };
    let first = threaded_target();
    let pid = first.0.id();
    match daemon.client().request(&Request::Confine { pid }) {
        Ok(Response::Done) => {}
        other => panic!("confine the first process: {other:?}"),
    }
    drop(first); // killed and reaped
    daemon.wait_for("the exit leaves the registry", |s| {
        !s.confined.contains(&pid)
    });
    let out = Command::new(&helper)
        .args(["pid-at", &pid.to_string()])
        .output()
        .expect("start a process with the same pid");
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(said.trim(), format!("started {pid}"), "{said}");
    /// The second process is a grandchild: killed by its number, which
    /// is ours until it is reaped by init.
    struct KillOnDrop(u32);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            // SAFETY: a process this test started.
            unsafe { libc::kill(self.0 as libc::pid_t, libc::SIGKILL) };
        }
    }
    let _second = KillOnDrop(pid);
    match daemon.client().request(&Request::Confine { pid }) {
        Ok(Response::Done) => {}
        other => panic!("confine the process that reused the number: {other:?}"),
    }
    assert!(daemon.status().confined.contains(&pid));
}

/// Renaming the pin dir while nothing is confined (no hook attached, so no
/// link pin held to put back) must not break the next confine.
#[test]
fn a_renamed_pin_dir_is_put_back_and_confine_still_works() {
    let Some(daemon) = Daemon::start("pin_rename", POLICIES[0], &[]) else {
        return;
    };
    /// Stops the daemon, then unloads what was left under the new name
    /// (the daemon pins anew under the old one; the moved pins are left).
    struct Renamed {
        daemon: Option<Daemon>,
        moved: std::path::PathBuf,
    }
    impl Drop for Renamed {
        fn drop(&mut self) {
            drop(self.daemon.take());
            if let Err(error) = kernel::unload(&self.moved) {
                eprintln!("cleanup of {} failed: {error}", self.moved.display());
            }
        }
    }
    let name = daemon
        .pin_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("pins")
        .to_owned();
    let renamed = Renamed {
        moved: daemon.pin_dir.with_file_name(format!("{name}-moved")),
        daemon: Some(daemon),
    };
    let Some(daemon) = renamed.daemon.as_ref() else {
        unreachable!("just set");
    };
    std::fs::rename(&daemon.pin_dir, &renamed.moved).expect("rename the pin dir");
    assert!(
        support::eventually(|| daemon.log().contains("were put back")),
        "the daemon never noticed: {}",
        daemon.log()
    );
    let target = threaded_target();
    let pid = target.0.id();
    match daemon.client().request(&Request::Confine { pid }) {
        Ok(Response::Done) => {}
        other => panic!("confine after the rename: {other:?}"),
    }
    assert!(daemon.status().confined.contains(&pid));
}

/// Kills at random moments of a reload: a save, then SIGKILL 0–70 ms
/// later (the daemon waits 25 ms for the editor to finish, then reads,
/// lowers, diffs and applies), while saves cycle through three policies.
#[test]
fn random_kills_during_reloads_never_leave_a_mixed_generation() {
    let Some(mut daemon) = Daemon::start("fault_random", POLICIES[0], &[]) else {
        return;
    };
    let kills: usize = std::env::var("AA_FAULT_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25);
    let rules = all_rules();
    let mut keeper = Keeper::start(&daemon);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let (mut in_force, mut mid_apply) = (0, 0);
    for kill in 0..kills {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let when = format!("kill {kill}");
        let next = (in_force + 1) % POLICIES.len();
        save(&daemon, POLICIES[next]);
        std::thread::sleep(Duration::from_micros(seed % 70_000));
        daemon.kill9();
        if check_after_kill(
            &daemon,
            &[rules[in_force].clone(), rules[next].clone()],
            &when,
        ) {
            mid_apply += 1;
        }
        daemon.restart(&[]);
        check_after_restart(&daemon, &rules[next], &when);
        keeper.check(&daemon, &when);
        check_every_mark_is_registered(&daemon, &when);
        in_force = next;
    }
    eprintln!("{kills} random kills during reloads, {mid_apply} inside an apply, 0 mismatches");
}

#[test]
fn a_process_killed_while_it_is_confined_never_stays_in_the_registry() {
    let Some(mut daemon) = Daemon::start("zombies", POLICIES[0], &[]) else {
        return;
    };
    let mut seed = 0x1234_5678_9abc_def1u64;
    for round in 0..30 {
        let mut target = Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("start a target");
        let pid = target.id();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_micros(seed % 3000);
        let killer = std::thread::spawn(move || {
            std::thread::sleep(delay);
            // SAFETY: our own child, not reaped yet: the PID is still ours.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        });
        let _ = daemon.client().request(&Request::Confine { pid });
        let _ = killer.join();
        // Dead but not reaped yet: a zombie must not be (or stay) confined.
        let status = daemon.wait_for("the dead target leaves the registry", |s| {
            !s.confined.contains(&pid)
        });
        assert!(!status.confined.contains(&pid), "round {round}");
        let _ = target.wait();
    }
    // A zombie is refused up front.
    let mut zombie = Command::new("true").spawn().expect("start");
    let pid = zombie.id();
    std::thread::sleep(Duration::from_millis(200));
    match daemon.client().request(&Request::Confine { pid }) {
        Err(error) => assert!(error.to_string().contains("has exited"), "{error}"),
        Ok(other) => panic!("a zombie was confined: {other:?}"),
    }
    let _ = zombie.wait();
    // And nothing stale survives a restart.
    daemon.restart(&[]);
    assert!(daemon.status().confined.is_empty());
}

#[test]
fn a_fifo_at_the_policy_path_is_refused_without_blocking_anything() {
    let Some(mut daemon) = Daemon::start("fifo", POLICIES[0], &[]) else {
        return;
    };
    let generation = daemon.status().generation;
    std::fs::remove_file(&daemon.policy).expect("remove the policy");
    let path = std::ffi::CString::new(daemon.policy.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: mkfifo with a valid path.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    let status = daemon.wait_for("the FIFO refused", |s| {
        s.last_reload
            .as_ref()
            .and_then(|r| r.error.as_deref())
            .is_some_and(|e| e.contains("is a FIFO, not a regular file"))
    });
    assert_eq!(
        status.generation, generation,
        "the last good generation stays"
    );
    // The loop still answers, and a real save still applies.
    assert!(matches!(
        daemon.client().request(&Request::Applied),
        Ok(Response::Applied { .. })
    ));
    std::fs::remove_file(&daemon.policy).expect("remove the FIFO");
    std::fs::write(&daemon.policy, POLICIES[1]).expect("save");
    daemon.wait_for("the save applied", |s| s.generation > generation);
    let started = Instant::now();
    assert!(daemon.stop().is_some_and(|s| s.success()));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "SIGTERM is obeyed"
    );
}

#[test]
fn idle_clients_cannot_take_the_descriptors_reloads_and_confines_need() {
    let Some(daemon) = Daemon::start("descriptors", POLICIES[0], &[]) else {
        return;
    };
    // Cap the daemon's descriptors, as a default 1024 would be under load.
    let pid = daemon.pid();
    let prlimit = |limit: &str| {
        let out = Command::new("prlimit")
            .args(["--pid", &pid.to_string(), &format!("--nofile={limit}")])
            .output()
            .expect("run prlimit");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    prlimit("256:256");
    // Many idle clients: those over the limit are told so (those over the
    // refusals' own limit are closed), the rest sit idle.
    let mut clients = Vec::new();
    for _ in 0..300 {
        let stream = std::os::unix::net::UnixStream::connect(&daemon.socket).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_millis(5)))
            .expect("timeout");
        clients.push(stream);
    }
    std::thread::sleep(Duration::from_millis(900));
    let mut told = 0;
    for stream in &mut clients {
        let mut reply = Vec::new();
        let _ = stream.read_to_end(&mut reply);
        if String::from_utf8_lossy(&reply).contains("connections, as many as its descriptors allow")
        {
            told += 1;
        }
    }
    assert!(told > 0, "no connection over the limit was told why");
    // While they idle, a save still applies: the daemon kept descriptors
    // for it.
    save(&daemon, POLICIES[1]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while daemon.kernel_rules() != rules_of(POLICIES[1]) {
        assert!(
            Instant::now() < deadline,
            "the save never applied under 300 idle clients: {}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Once they leave, clients and confines are served again.
    drop(clients);
    let target = Plain(Command::new("sleep").arg("30").spawn().expect("sleep"));
    let answer = retry_while_busy(|| {
        daemon
            .client()
            .request(&Request::Confine { pid: target.0.id() })
    });
    assert!(matches!(answer, Ok(Response::Done)), "{answer:?}");
    // A read that fails for want of descriptors is retried, not judged.
    let generation = daemon.status().generation;
    prlimit("16:256");
    save(&daemon, POLICIES[2]);
    std::thread::sleep(Duration::from_millis(300));
    prlimit("256:256");
    daemon.wait_for("the failed reload retried", |s| s.generation > generation);
    let log = daemon.log();
    assert!(log.contains("trying the reload again"), "{log}");
    assert!(
        log.contains("Too many open files"),
        "the limit was hit: {log}"
    );
    assert!(
        !log.contains("outcome=\"invalid\""),
        "never called invalid: {log}"
    );
    assert_eq!(daemon.kernel_rules(), rules_of(POLICIES[2]));
}

/// Runs `request` until the daemon stops refusing it as busy (the
/// server notices closed connections at once, but not before this runs).
fn retry_while_busy<T: std::fmt::Debug>(
    request: impl Fn() -> Result<T, aa_policyd::control::client::ClientError>,
) -> Result<T, aa_policyd::control::client::ClientError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let answer = request();
        match &answer {
            Err(error)
                if error
                    .to_string()
                    .contains("as many as its descriptors allow")
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            _ => return answer,
        }
    }
}

#[test]
fn targets_that_cannot_or_must_not_be_stopped_are_refused_at_once() {
    let Some(daemon) = Daemon::start("unstoppable", POLICIES[0], &[]) else {
        return;
    };
    let started = Instant::now();
    for _ in 0..35 {
        match daemon.client().request(&Request::Confine { pid: 2 }) {
            Err(error) => assert!(error.to_string().contains("kernel thread"), "{error}"),
            Ok(other) => panic!("kthreadd was confined: {other:?}"),
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "35 refusals took {:?}",
        started.elapsed()
    );
    for (pid, words) in [
        (1, "init process"),
        (daemon.pid(), "this daemon itself"),
        (std::process::id(), "ancestor of this daemon"),
    ] {
        match daemon.client().request(&Request::Confine { pid }) {
            Err(error) => assert!(error.to_string().contains(words), "{pid}: {error}"),
            Ok(other) => panic!("{pid} was confined: {other:?}"),
        }
    }
    assert!(!stopped(daemon.pid()), "the daemon never stopped itself");
    // A save right after still applies promptly.
    let generation = daemon.status().generation;
    save(&daemon, POLICIES[1]);
    daemon.wait_for("the save applied", |s| s.generation > generation);
}

#[test]
fn a_second_daemon_on_the_same_socket_is_refused_and_leaves_nothing_behind() {
    let Some(daemon) = Daemon::start("second_socket", POLICIES[0], &[]) else {
        return;
    };
    let other_pins = support::unique_pin_dir("second_socket_other");
    let out = Command::new(env!("CARGO_BIN_EXE_aa-policyd"))
        .arg("run")
        .arg("--policy")
        .arg(&daemon.policy)
        .arg("--socket")
        .arg(&daemon.socket)
        .arg("--pin-dir")
        .arg(&other_pins)
        .stdin(Stdio::null())
        .output()
        .expect("run a second daemon");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already listening"), "{stderr}");
    assert!(
        daemon.socket.exists(),
        "the first daemon's socket is still there"
    );
    assert!(
        daemon.client().request(&Request::Status).is_ok(),
        "and answers"
    );
    assert!(!other_pins.exists(), "the refused daemon created nothing");
}

#[test]
fn after_a_restart_the_flood_record_reports_only_new_drops() {
    let audit = "mode: audit\nsyscalls:\n  allow: [\"@system-service\"]\n";
    let Some(mut daemon) = Daemon::start("drops", audit, &[]) else {
        return;
    };
    // Drops counted before this daemon started (by an earlier run).
    let path = kernel::PinLayout::new(&daemon.pin_dir).map("COUNTERS");
    let data = aya::maps::MapData::from_pin(&path).expect("pinned counters");
    let mut counters: aya::maps::Array<_, u64> =
        aya::maps::Array::try_from(aya::maps::Map::Array(data)).expect("array");
    counters.set(0, 23_018_607, 0).expect("set the drop count");
    daemon.restart(&[]);
    // A flood of audited denials: over 200 a second, so a summary follows.
    let out = Command::new(env!("CARGO_BIN_EXE_aa-policyd"))
        .args(["exec", "--socket"])
        .arg(&daemon.socket)
        .args([
            "--",
            "python3",
            "-c",
            "import ctypes\nlibc = ctypes.CDLL(None)\nfor _ in range(3000): libc.syscall(135, 0xffffffff)\n",
        ])
        .output()
        .expect("run the flood");
    assert!(out.status.success(), "audit mode never kills");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !daemon.log().contains("event flood") {
        assert!(
            Instant::now() < deadline,
            "no flood record: {}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = daemon.log();
    assert!(
        !log.contains("23018607 lost in the kernel ring buffer"),
        "the drops from before the restart are reported as new: {log}"
    );
}
