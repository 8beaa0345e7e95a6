//! The probes and the loader against the real kernel: syscall enforcement,
//! confinement identity, egress, audit mode, atomic reloads and restarts.
//! Run as root; `AA_REQUIRE_KERNEL=1` turns a skip into a failure.

mod support;

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use aa_policyd::events::EventKind;
use aa_policyd::guard::Refusal;
use aa_policyd::loader::kernel::KernelLoader;
use aa_policyd::loader::process::ExitStatus;
use aa_policyd::loader::{Loader, LoaderError};
use aa_policyd::ruleset::{Mode, SyscallRule, SyscallSet};
use support::{Plain, default_rules, eventually, kernel_test, rules_from_yaml, without_syscall};

const SIGKILL: i32 = 9;

fn denied_syscall(event: &aa_policyd::events::Event, pid: Option<u32>, name: &str) -> bool {
    matches!(&event.kind, EventKind::DeniedSyscall { .. })
        && event.syscall().as_deref() == Some(name)
        && pid.is_none_or(|p| event.tgid == p)
}

#[test]
fn allowed_programs_run_and_a_missing_syscall_kills_with_an_event_naming_it() {
    let Some(mut t) = kernel_test("allowed_and_missing") else {
        return;
    };
    let mut events = t.events();
    let cases: [(&[&str], &str); 3] = [
        (&["/bin/true"], "mprotect"),
        (&["sh", "-c", "echo hi"], "write"),
        (&["python3", "-c", "print(1)"], "openat"),
    ];
    for (argv, needed) in cases {
        t.apply_rules(&default_rules()).expect("apply default");
        assert_eq!(
            t.spawn(argv).wait(),
            ExitStatus::Exited(0),
            "{argv:?} under the default policy"
        );

        t.apply_rules(&without_syscall(default_rules(), needed))
            .expect("apply without");
        let child = t.spawn(argv);
        assert_eq!(
            child.wait(),
            ExitStatus::Killed(SIGKILL),
            "{argv:?} without {needed}"
        );
        let event = events.wait_for(|e| denied_syscall(e, None, needed));
        assert!(
            event.is_some(),
            "no deny event for {needed}; saw {:?}",
            events.seen
        );
        assert_eq!(event.map(|e| e.mode), Some(Mode::Enforce));
    }
}

#[test]
fn an_unconfined_process_is_never_affected() {
    let Some(mut t) = kernel_test("unconfined") else {
        return;
    };
    // A confined process keeps every hook attached under a policy without
    // `write`; an unconfined shell must still print.
    t.apply_rules(&without_syscall(default_rules(), "write"))
        .expect("apply");
    let keeper = t.spawn(&["sleep", "5"]);
    assert!(t.loader().hooks_attached());
    let out = Command::new("sh")
        .args(["-c", "echo unconfined"])
        .output()
        .expect("run sh");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "unconfined\n");
    drop(keeper);
}

#[test]
fn a_grandchild_and_a_new_thread_are_confined_and_an_exited_process_leaves_the_registry() {
    let Some(mut t) = kernel_test("descendants") else {
        return;
    };
    t.apply_rules(&default_rules()).expect("apply");
    let script = "import os, threading, time, subprocess\n\
                  t = threading.Thread(target=time.sleep, args=(3,)); t.start()\n\
                  subprocess.Popen(['sh', '-c', 'sleep 3 & wait'])\n\
                  time.sleep(3)\n";
    let child = t.spawn(&["python3", "-c", script]);
    let pid = child.pid();
    assert!(
        eventually(|| process_threads(pid).len() >= 2),
        "python started its thread"
    );
    assert!(
        eventually(|| !descendants(pid).is_empty()),
        "the shell and its sleep exist"
    );
    std::thread::sleep(Duration::from_millis(200));
    for tid in process_threads(pid) {
        assert!(
            t.loader().is_task_marked(tid).expect("lookup"),
            "thread {tid} of {pid} is confined"
        );
    }
    let grandchildren = descendants(pid);
    let confined = t.loader().confined().expect("registry");
    for &descendant in &grandchildren {
        assert!(
            t.loader().is_task_marked(descendant).expect("lookup"),
            "descendant {descendant} is confined"
        );
        assert!(
            confined.pids().any(|p| p == descendant),
            "descendant {descendant} is in the registry"
        );
    }
    assert!(
        grandchildren.len() >= 2,
        "child and grandchild: {grandchildren:?}"
    );
    assert_eq!(child.wait(), ExitStatus::Exited(0));
    assert!(
        eventually(|| !t
            .loader()
            .confined()
            .expect("registry")
            .pids()
            .any(|p| p == pid)),
        "an exited process leaves the registry"
    );
}

#[test]
fn a_process_that_reuses_a_confined_pid_is_not_confined() {
    let Some(mut t) = kernel_test("pid_reuse") else {
        return;
    };
    t.apply_rules(&without_syscall(default_rules(), "write"))
        .expect("apply");
    let _keeper = t.spawn(&["sleep", "10"]); // keeps the hooks attached
    for _attempt in 0..5 {
        let target = t.spawn(&["/bin/true"]);
        let pid = target.pid();
        assert_eq!(target.wait(), ExitStatus::Exited(0));
        // A new process with the very same PID, via clone3(set_tid).
        let Some(status) = run_with_pid(pid, "/bin/sh", &["sh", "-c", "echo reused > /dev/null"])
        else {
            continue; // the PID was taken by someone else meanwhile: try again
        };
        assert_eq!(
            status,
            ExitStatus::Exited(0),
            "the new owner of pid {pid} was not confined"
        );
        assert!(
            !t.loader()
                .confined()
                .expect("registry")
                .pids()
                .any(|p| p == pid)
        );
        return;
    }
    panic!("could not recreate a freed PID with clone3(set_tid) in 5 attempts");
}

#[test]
fn confining_a_running_multithreaded_process_marks_every_thread() {
    let Some(mut t) = kernel_test("multithreaded") else {
        return;
    };
    t.apply_rules(&default_rules()).expect("apply");
    let plain = Plain(
        Command::new("python3")
            .args(["-c", "import threading, time\nfor _ in range(3): threading.Thread(target=time.sleep, args=(10,)).start()\ntime.sleep(10)\n"])
            .spawn()
            .expect("start python"),
    );
    let pid = plain.0.id();
    assert!(
        eventually(|| process_threads(pid).len() >= 4),
        "python started 3 threads"
    );
    t.loader().confine(pid).expect("confine");
    let threads = process_threads(pid);
    assert!(threads.len() >= 4);
    for tid in threads {
        assert!(
            t.loader().is_task_marked(tid).expect("lookup"),
            "thread {tid} is confined"
        );
    }
    assert!(
        t.loader()
            .confined()
            .expect("registry")
            .pids()
            .any(|p| p == pid)
    );
    assert!(
        !t.loader()
            .is_task_marked(std::process::id())
            .expect("lookup"),
        "the test itself is not confined"
    );
    t.loader().release(pid).expect("release");
    assert!(!t.loader().is_task_marked(pid).expect("lookup"));
    assert!(
        !t.loader().hooks_attached(),
        "nothing confined: hooks detached"
    );
}

#[test]
fn a_busy_process_confined_while_running_is_enforced_on_every_thread() {
    let Some(mut t) = kernel_test("running_enforced") else {
        return;
    };
    t.apply_rules(&default_rules()).expect("apply");
    let script = "import os, threading\n\
                  def spin():\n    while True: os.getppid()\n\
                  for _ in range(2): threading.Thread(target=spin, daemon=True).start()\n\
                  spin()\n";
    let mut plain = Plain(
        Command::new("python3")
            .args(["-c", script])
            .spawn()
            .expect("start python"),
    );
    let pid = plain.0.id();
    assert!(
        eventually(|| process_threads(pid).len() >= 3),
        "python started its threads"
    );
    t.loader().confine(pid).expect("confine a running process");
    std::thread::sleep(Duration::from_millis(100));
    assert!(process_alive(pid), "getppid is allowed: it keeps running");
    t.apply_rules(&without_syscall(default_rules(), "getppid"))
        .expect("remove getppid");
    let status = plain.0.wait().expect("wait");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(SIGKILL)
    );
}

#[test]
fn egress_outside_the_allowlist_gets_eperm_for_confined_processes_only() {
    let Some(mut t) = kernel_test("egress") else {
        return;
    };
    let listeners: Vec<TcpListener> = ["127.0.0.1:0", "127.0.0.1:0", "[::1]:0", "[::1]:0"]
        .iter()
        .map(|a| TcpListener::bind(a).expect("listen"))
        .collect();
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect();
    let mut rules = default_rules();
    rules.egress = rules_from_yaml(&format!(
        "network: {{allowlist: ['127.0.0.1:{}', '[::1]:{}']}}\n",
        ports[0], ports[2]
    ))
    .egress;
    t.apply_rules(&rules).expect("apply");
    let probe = format!(
        "import socket, errno\n\
         for family, host, port in [(socket.AF_INET, '127.0.0.1', {}), (socket.AF_INET, '127.0.0.1', {}), (socket.AF_INET6, '::1', {}), (socket.AF_INET6, '::1', {})]:\n\
         \x20   s = socket.socket(family); print(errno.errorcode.get(s.connect_ex((host, port)), 'OK')); s.close()\n",
        ports[0], ports[1], ports[2], ports[3]
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let out_path = dir.path().join("out");
    let script = probe;
    let wrapped = format!(
        "import sys\nsys.stdout = open({:?}, 'w')\n{script}",
        out_path.display().to_string()
    );
    assert_eq!(
        t.spawn(&["python3", "-c", &wrapped]).wait(),
        ExitStatus::Exited(0)
    );
    let confined = std::fs::read_to_string(&out_path).expect("confined output");
    assert_eq!(
        confined.split_whitespace().collect::<Vec<_>>(),
        ["OK", "EPERM", "OK", "EPERM"]
    );

    let unconfined = Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("run python");
    let unconfined = String::from_utf8_lossy(&unconfined.stdout).into_owned();
    assert_eq!(
        unconfined.split_whitespace().collect::<Vec<_>>(),
        ["OK", "OK", "OK", "OK"]
    );

    // Egress mode "unrestricted" (no network section) lets everything through.
    let mut open_rules = default_rules();
    open_rules.egress = aa_policyd::ruleset::EgressRules::default();
    t.apply_rules(&open_rules)
        .expect("apply unrestricted egress");
    assert_eq!(
        t.spawn(&["python3", "-c", &wrapped]).wait(),
        ExitStatus::Exited(0)
    );
    let confined = std::fs::read_to_string(&out_path).expect("confined output");
    assert_eq!(
        confined.split_whitespace().collect::<Vec<_>>(),
        ["OK", "OK", "OK", "OK"]
    );
}

#[test]
fn a_confined_child_holds_no_bpf_file_descriptors() {
    let Some(mut t) = kernel_test("no_bpf_fds") else {
        return;
    };
    t.apply_rules(&default_rules()).expect("apply");
    let child = t.spawn(&["sleep", "2"]);
    let pid = child.pid();
    assert!(eventually(|| std::fs::read_link(format!(
        "/proc/{pid}/exe"
    ))
    .is_ok_and(|p| p.ends_with("sleep"))));
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|target| target.display().to_string())
        .collect();
    assert!(!fds.is_empty(), "stdio is inherited");
    assert!(
        fds.iter().all(|fd| !fd.contains("bpf")),
        "no BPF fd in the confined child: {fds:?}"
    );
    drop(child);
}

#[test]
fn audit_mode_reports_the_same_violations_without_killing() {
    let Some(mut t) = kernel_test("audit") else {
        return;
    };
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("addr").port();
    let mut rules = without_syscall(default_rules(), "write");
    rules.mode = Mode::Audit;
    rules.egress = rules_from_yaml("network: {allowlist: ['10.0.0.0/8']}\n").egress;
    t.apply_rules(&rules).expect("apply");
    let mut events = t.events();
    let script =
        format!("import socket\ns = socket.socket(); print(s.connect_ex(('127.0.0.1', {port})))\n");
    let child = t.spawn(&["python3", "-c", &script]);
    let pid = child.pid();
    assert_eq!(
        child.wait(),
        ExitStatus::Exited(0),
        "audit mode never kills"
    );
    let write = events
        .wait_for(|e| denied_syscall(e, Some(pid), "write"))
        .expect("write reported");
    assert_eq!(write.mode, Mode::Audit);
    let connect = events
        .wait_for(|e| matches!(&e.kind, EventKind::DeniedConnect { destination } if destination.port() == port))
        .expect("connect reported");
    assert_eq!(connect.mode, Mode::Audit);
}

#[test]
fn a_thousand_reloads_never_kill_a_process_using_a_syscall_both_generations_allow() {
    let Some(mut t) = kernel_test("atomicity") else {
        return;
    };
    let base = default_rules();
    let mut other = base.clone();
    other.syscalls = match base.syscalls {
        SyscallRule::Allow(set) => {
            let mut set: SyscallSet = set;
            for name in ["ptrace", "mount", "setns", "bpf"] {
                if let Some(n) = aa_policyd::ruleset::Arch::native().syscall_number(name) {
                    set.insert(n);
                }
            }
            SyscallRule::Allow(set)
        }
        SyscallRule::Unrestricted => SyscallRule::Unrestricted,
    };
    other.egress = rules_from_yaml(
        "network: {allowlist: ['10.1.0.0/16:443', '[2001:db8::]/32', '127.0.0.0/8', '::1']}\n",
    )
    .egress;
    // Path rules: `base` reads only from an allowlist that covers /tmp,
    // `other` reads anywhere but /srv/a and /srv/b. An open judged by
    // base's restriction and other's entries (a mix) would be killed.
    other.paths = rules_from_yaml("filesystem: {deny: [/srv/a, /srv/b]}\n").paths;
    assert_eq!(base.paths.read, aa_policyd::ruleset::Restriction::Allowlist);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("read-me");
    std::fs::write(&file, "x").expect("write");
    t.apply_rules(&base).expect("apply base");
    let script = format!(
        "import os, time\nend = time.time() + 60\nwhile time.time() < end:\n    os.getppid()\n    os.close(os.open({:?}, os.O_RDONLY))\n",
        file.display().to_string()
    );
    let child = t.spawn(&["python3", "-c", &script]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        t.loader().is_task_marked(child.pid()).expect("lookup"),
        "the looping process is confined"
    );
    for round in 0..1000 {
        let rules = if round % 2 == 0 { &other } else { &base };
        let report = t.apply_rules(rules).expect("reload");
        assert!(report.map_ops > 0);
        assert!(process_alive(child.pid()), "killed during reload {round}");
    }
    assert!(process_alive(child.pid()));
    drop(child);
}

#[test]
fn a_removed_syscall_is_denied_right_after_apply_returns() {
    let Some(mut t) = kernel_test("removed_now") else {
        return;
    };
    t.apply_rules(&default_rules()).expect("apply");
    let dir = tempfile::tempdir().expect("temp dir");
    let fifo = dir.path().join("go");
    let c_fifo = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: mkfifo with a valid path.
    assert_eq!(unsafe { libc::mkfifo(c_fifo.as_ptr(), 0o600) }, 0);
    let script = format!("read x < {}; echo after", fifo.display());
    let child = t.spawn(&["sh", "-c", &script]);
    std::thread::sleep(Duration::from_millis(200));
    t.apply_rules(&without_syscall(default_rules(), "write"))
        .expect("remove write");
    std::fs::write(&fifo, "go\n").expect("release the shell");
    assert_eq!(child.wait(), ExitStatus::Killed(SIGKILL));
}

#[test]
fn enforcement_survives_the_loader_and_a_new_loader_adopts_without_attaching_twice() {
    let Some(mut t) = kernel_test("restart") else {
        return;
    };
    t.apply_rules(&without_syscall(default_rules(), "write"))
        .expect("apply");
    let dir = tempfile::tempdir().expect("temp dir");
    let fifo = dir.path().join("go");
    let c_fifo = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: mkfifo with a valid path.
    assert_eq!(unsafe { libc::mkfifo(c_fifo.as_ptr(), 0o600) }, 0);
    let child = t.spawn(&[
        "sh",
        "-c",
        &format!("read x < {}; echo after", fifo.display()),
    ]);
    let links_before = t.loader().attached_links().expect("links");
    assert_eq!(
        links_before.len(),
        aa_policyd::loader::kernel::HOOK_COUNT,
        "every hook attached"
    );
    let generation = t.loader().applied().expect("applied").generation;

    // The loader goes away, every fd closed, as when its process exits; a
    // new one opens the same pin dir (only one may hold it at a time).
    t.restart_loader();
    std::fs::write(&fifo, "go\n").expect("release the shell");
    assert_eq!(
        child.wait(),
        ExitStatus::Killed(SIGKILL),
        "still enforced after the old loader left"
    );

    assert_eq!(
        t.loader().applied().expect("adopted").generation,
        generation
    );
    let second = t.spawn(&["sleep", "1"]);
    let links_after = t.loader().attached_links().expect("links");
    assert_eq!(links_after, links_before, "same links, none attached again");
    let attached_programs: Vec<u32> = links_after.iter().map(|(_, _, program)| *program).collect();
    let kernel_links = aya::programs::loaded_links()
        .filter_map(Result::ok)
        .filter(|link| attached_programs.contains(&link.program_id()))
        .count();
    assert_eq!(
        kernel_links,
        aa_policyd::loader::kernel::HOOK_COUNT,
        "one kernel link per hook"
    );
    assert_eq!(second.wait(), ExitStatus::Exited(0));
}

#[test]
fn a_second_loader_on_the_same_pin_dir_is_refused_while_the_first_lives() {
    let Some(mut t) = kernel_test("second_loader") else {
        return;
    };
    match KernelLoader::open(&t.pin_dir) {
        Err(LoaderError::Busy { pin_dir }) => assert_eq!(pin_dir, t.pin_dir),
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("two loaders on one pin dir"),
    }
    assert!(matches!(
        aa_policyd::loader::kernel::unload(&t.pin_dir),
        Err(LoaderError::Busy { .. })
    ));
    t.restart_loader();
    assert!(t.loader().applied().is_ok());
}

#[test]
fn the_loader_refuses_to_empty_the_allowlist_under_a_confined_process() {
    let Some(mut t) = kernel_test("guard") else {
        return;
    };
    t.apply_rules(&default_rules()).expect("apply");
    let before = t.loader().applied().expect("applied");
    let child = t.spawn(&["sleep", "5"]);
    let mut empty = default_rules();
    empty.syscalls = SyscallRule::Allow(SyscallSet::empty(aa_policyd::ruleset::Arch::native()));
    let result = t.apply_rules(&empty);
    assert!(
        matches!(
            result,
            Err(LoaderError::Refused(
                Refusal::EmptyAllowlistWhileConfined { .. }
            ))
        ),
        "{result:?}"
    );
    assert_eq!(
        t.loader().applied().expect("applied"),
        before,
        "previous generation still in force"
    );
    assert!(process_alive(child.pid()));
    drop(child);
    assert!(eventually(|| t
        .loader()
        .confined()
        .expect("registry")
        .is_empty()));
    t.apply_rules(&empty).expect("nothing confined: applied");
    assert!(matches!(
        t.loader().confine(std::process::id()),
        Err(LoaderError::Refused(
            Refusal::ConfineUnderEmptyAllowlist { .. }
        ))
    ));
}

fn process_threads(pid: u32) -> Vec<u32> {
    aa_policyd::loader::process::threads(pid).unwrap_or_default()
}

/// Every process below `pid`, from /proc/*/task/*/children.
fn descendants(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut queue = vec![pid];
    while let Some(parent) = queue.pop() {
        for tid in process_threads(parent) {
            let children = std::fs::read_to_string(format!("/proc/{parent}/task/{tid}/children"))
                .unwrap_or_default();
            for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                found.push(child);
                queue.push(child);
            }
        }
    }
    found
}

fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with(|c| c != 'Z' && c != 'X'))
        })
        .unwrap_or(false)
}

/// Runs `path` in a new process whose PID is exactly `pid` (clone3 with
/// set_tid); `None` if that PID is not free.
fn run_with_pid(pid: u32, path: &str, argv: &[&str]) -> Option<ExitStatus> {
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    let c_path = std::ffi::CString::new(path).expect("path");
    let c_args: Vec<std::ffi::CString> = argv
        .iter()
        .map(|a| std::ffi::CString::new(*a).expect("arg"))
        .collect();
    let mut c_argv: Vec<*const libc::c_char> = c_args.iter().map(|a| a.as_ptr()).collect();
    c_argv.push(std::ptr::null());
    let tid: libc::pid_t = pid as libc::pid_t;
    let args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        set_tid: &tid as *const libc::pid_t as u64,
        set_tid_size: 1,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without CLONE_VM: the child gets a copy of our memory
    // and only calls execv/_exit on data prepared before the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if rc == 0 {
        unsafe {
            libc::execv(c_path.as_ptr(), c_argv.as_ptr());
            libc::_exit(127);
        }
    }
    if rc < 0 {
        return None;
    }
    assert_eq!(rc as u32, pid, "clone3 honoured set_tid");
    let child = aa_policyd::loader::process::ConfinedChild { pid };
    Some(child.wait().expect("wait"))
}
