//! File-path rules against the real kernel, through the real binary
//! (`exec --policy`) and through the daemon: each way a confined program
//! can name a file outside its allowlist (directly, through a symlink in
//! an allowed directory, through `..`, relative to its cwd, through a bind
//! mount of the denied directory into an allowed one) is killed; deny rules
//! win over a wider allow; writes, unlinks and renames are judged too;
//! audit mode reports and never kills; an unconfined process is untouched;
//! and a reload that removes a prefix holds from the moment it is applied.

mod support;

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::daemon::Daemon;
use support::{exec_with_policy, kernel_available};

/// The syscalls of the shipped default policy, so coreutils and sh run.
const SYSCALLS: &str = r#"  syscalls:
    allow: ["@default", "@basic-io", "@file-system", "@io-event", "@ipc", "@memory",
            "@network-io", "@process", "@signal", "@timer", "@sync", "@credentials",
            "@resources", ioctl, sysinfo, umask, getcpu, fadvise64, flock, faccessat2]
"#;

/// A directory tree for one test, with a bind mount of `denied` inside
/// `allowed` (unmounted on drop, also when the test fails):
///
/// ```text
/// root/allowed/{file, victim, link -> ../denied, mnt (bind of denied), private/key,
///               carrier, carrier-fixed (ELFs whose interpreter is in denied)}
/// root/denied/{secret, ld.so, fixed-interpreter}
/// root/writable/deep/d/d/.../d/file (600 levels)
/// root/extra/file
/// ```
struct Tree {
    dir: tempfile::TempDir,
    mounted: Option<PathBuf>,
}

impl Tree {
    fn new() -> Tree {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        for sub in [
            "allowed/private",
            "allowed/mnt",
            "denied",
            "writable",
            "extra",
        ] {
            std::fs::create_dir_all(root.join(sub)).expect("mkdir");
        }
        std::fs::write(root.join("allowed/file"), "allowed content\n").expect("write");
        std::fs::write(root.join("allowed/private/key"), "key\n").expect("write");
        std::fs::write(root.join("denied/secret"), "secret\n").expect("write");
        std::fs::write(root.join("extra/file"), "extra\n").expect("write");
        std::os::unix::fs::symlink("../denied", root.join("allowed/link")).expect("symlink");
        let deep = (0..DEPTH).fold(root.join("writable/deep"), |dir, _| dir.join("d"));
        std::fs::create_dir_all(&deep).expect("mkdir deep");
        std::fs::write(deep.join("file"), "deep\n").expect("write deep");
        build_carrier(root);
        let mut tree = Tree { dir, mounted: None };
        tree.reset_victim();
        let (source, target) = (tree.path("denied"), tree.path("allowed/mnt"));
        let c = |p: &Path| CString::new(p.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: valid NUL-terminated paths; a bind mount of our own directory.
        let rc = unsafe {
            libc::mount(
                c(&source).as_ptr(),
                c(&target).as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "bind mount: {}", std::io::Error::last_os_error());
        tree.mounted = Some(target);
        tree
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    fn show(&self, relative: &str) -> String {
        self.path(relative).display().to_string()
    }

    /// A file the unlink scenario deletes (the kill lands after the call),
    /// and one the chmod scenario changes.
    fn reset_victim(&self) {
        std::fs::write(self.path("allowed/victim"), "victim\n").expect("write victim");
        std::fs::write(self.path("writable/through-fd"), "x\n").expect("write");
    }

    /// Read: the system and `allowed`, `writable`, `extra`; write: only
    /// `writable`; `allowed/private` denied.
    fn policy(&self, mode: &str, extra: bool) -> String {
        let extra = if extra {
            format!(", {}", self.show("extra"))
        } else {
            String::new()
        };
        format!(
            "apiVersion: agent-assembly.dev/v1\nkind: Policy\nmetadata: {{name: paths}}\nspec:\n  mode: {mode}\n{SYSCALLS}  filesystem:\n    read:\n      allow: [/usr, /lib, /lib64, /bin, /sbin, /etc, /proc, /dev, {}, {}, {}{extra}]\n    write:\n      allow: [{}, /dev/null]\n    deny: [{}]\n",
            env!("CARGO_TARGET_TMPDIR"),
            self.show("allowed"),
            self.show("writable"),
            self.show("writable"),
            self.show("allowed/private"),
        )
    }
}

const DEPTH: usize = 600;

/// `allowed/carrier` and `allowed/carrier-fixed`: programs whose ELF
/// interpreter (PT_INTERP) lies in `denied` — a copy of the system's (PIE),
/// and a static non-PIE program (the kernel then reports no AT_BASE). The
/// kernel loads an interpreter without any syscall.
fn build_carrier(root: &Path) {
    let interpreter = root.join("denied/ld.so");
    std::fs::copy("/lib64/ld-linux-x86-64.so.2", &interpreter).expect("copy the ELF interpreter");
    let source = root.join("carrier.c");
    std::fs::write(&source, "int main(void) { return 0; }\n").expect("write carrier.c");
    let fixed = root.join("denied/fixed-interpreter");
    cc(&["-static", "-no-pie", "-o"], &fixed, &source, None);
    cc(
        &["-o"],
        &root.join("allowed/carrier"),
        &source,
        Some(&interpreter),
    );
    cc(
        &["-o"],
        &root.join("allowed/carrier-fixed"),
        &source,
        Some(&fixed),
    );
}

/// `cc FLAGS OUTPUT SOURCE`, with `interpreter` as the program's PT_INTERP.
fn cc(flags: &[&str], output: &Path, source: &Path, interpreter: Option<&Path>) {
    let mut command = Command::new("cc");
    command.args(flags).arg(output).arg(source);
    if let Some(interpreter) = interpreter {
        command.arg(format!("-Wl,--dynamic-linker={}", interpreter.display()));
    }
    let out = command.output().expect("run cc");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Drop for Tree {
    fn drop(&mut self) {
        if let Some(target) = self.mounted.take() {
            let path = CString::new(target.as_os_str().as_encoded_bytes()).expect("path");
            // SAFETY: unmounting the bind mount this test made.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// One way to touch a file, the exit status it must end with, and (for a
/// denial) the resolved path the event must name.
struct Scenario {
    name: &'static str,
    script: String,
    code: i32,
    denied_path: Option<String>,
}

fn scenarios(tree: &Tree) -> Vec<Scenario> {
    let at = |p: &str| tree.show(p);
    let secret = at("denied/secret");
    let killed = |name, script: String, path: String| Scenario {
        name,
        script,
        code: 137,
        denied_path: Some(path),
    };
    vec![
        Scenario {
            name: "allowed read",
            script: format!("cat {}", at("allowed/file")),
            code: 0,
            denied_path: None,
        },
        Scenario {
            name: "allowed write",
            script: format!(
                "echo x > {} && rm {}",
                at("writable/new"),
                at("writable/new")
            ),
            code: 0,
            denied_path: None,
        },
        killed(
            "read named directly",
            format!("cat {secret}"),
            secret.clone(),
        ),
        killed(
            "read through a symlink in an allowed directory",
            format!("cat {}", at("allowed/link/secret")),
            secret.clone(),
        ),
        killed(
            "read through ..",
            format!("cat {}/../denied/secret", at("allowed")),
            secret.clone(),
        ),
        killed(
            "read relative to the cwd",
            format!("cd {} && cat secret", at("denied")),
            secret.clone(),
        ),
        killed(
            "read through a bind mount into an allowed directory",
            format!("cat {}", at("allowed/mnt/secret")),
            secret.clone(),
        ),
        killed(
            "deny wins over a wider allow",
            format!("cat {}", at("allowed/private/key")),
            at("allowed/private/key"),
        ),
        killed(
            "write outside the write allowlist",
            format!("echo x > {}", at("allowed/new")),
            at("allowed/new"),
        ),
        killed(
            "unlink outside the write allowlist",
            format!("rm {}", at("allowed/victim")),
            at("allowed/victim"),
        ),
        killed(
            "unlink relative to the cwd through ..",
            format!("cd {} && rm ../allowed/victim", at("writable")),
            at("allowed/victim"),
        ),
        Scenario {
            name: "a file 600 directories deep read and removed",
            script: format!(
                "cd {}/{} && cat file && cd {} && rm -r deep",
                at("writable/deep"),
                vec!["d"; DEPTH].join("/"),
                at("writable")
            ),
            code: 0,
            denied_path: None,
        },
        Scenario {
            name: "chmod through /dev/fd/N of a writable file",
            script: format!(
                "exec 3< {w} && chmod 600 /dev/fd/3 && chmod 644 /dev/fd/3",
                w = at("writable/through-fd")
            ),
            code: 0,
            denied_path: None,
        },
        killed(
            "a device node made where writes are allowed",
            format!("mknod {} c 1 3", at("writable/null")),
            at("writable/null"),
        ),
        killed(
            "a program whose ELF interpreter is denied",
            at("allowed/carrier"),
            at("denied/ld.so"),
        ),
        killed(
            "a program whose non-PIE ELF interpreter is denied",
            at("allowed/carrier-fixed"),
            at("denied/fixed-interpreter"),
        ),
        killed(
            "rename into a read-only directory",
            format!(
                "echo x > {w} && mv {w} {}",
                at("allowed/moved"),
                w = at("writable/m")
            ),
            at("allowed/moved"),
        ),
    ]
}

fn check_code(scenario: &Scenario, code: Option<i32>, output: &str) {
    assert_eq!(
        code,
        Some(scenario.code),
        "{}: `{}` ended with {code:?}\n{output}",
        scenario.name,
        scenario.script
    );
}

/// The exit status, and the denial's event among `output`'s lines.
fn check(scenario: &Scenario, code: Option<i32>, output: &str) {
    check_code(scenario, code, output);
    if let Some(path) = &scenario.denied_path {
        assert!(
            output.contains(&format!(" of {path} (")),
            "{}: the denial names {path}:\n{output}",
            scenario.name
        );
    }
}

#[test]
fn path_rules_through_exec_standalone() {
    if !kernel_available("path_rules_exec") {
        return;
    }
    let tree = Tree::new();
    let policy = tree.policy("enforce", false);
    for scenario in scenarios(&tree) {
        tree.reset_victim();
        let out = exec_with_policy("path_rules_exec", &policy, &["sh", "-c", &scenario.script]);
        check(
            &scenario,
            out.code,
            &format!("{}{}", out.stdout, out.stderr),
        );
        assert_eq!(out.faults, Default::default(), "{}", scenario.name);
        if scenario.name == "allowed read" {
            assert_eq!(out.stdout, "allowed content\n");
        }
    }
}

#[test]
fn audit_mode_reports_the_path_and_never_kills() {
    if !kernel_available("path_rules_audit") {
        return;
    }
    let tree = Tree::new();
    let policy = tree.policy("audit", false);
    let secret = tree.show("denied/secret");
    let out = exec_with_policy(
        "path_rules_audit",
        &policy,
        &[
            "sh",
            "-c",
            &format!("cat {}", tree.show("allowed/mnt/secret")),
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout, "secret\n");
    assert!(
        out.stderr
            .contains(&format!("denied read of {secret} (openat)"))
            && out.stderr.contains("audit only, allowed"),
        "{}",
        out.stderr
    );
}

/// `aa-policyd exec` through the daemon's socket.
fn exec_through(daemon: &Daemon, script: &str) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_aa-policyd"))
        .args(["exec", "--socket"])
        .arg(&daemon.socket)
        .args(["--", "sh", "-c", script])
        .output()
        .expect("run aa-policyd exec");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn path_rules_through_the_daemon() {
    if !kernel_available("path_rules_daemon") {
        return;
    }
    let tree = Tree::new();
    let Some(daemon) = Daemon::start("path_rules_daemon", &tree.policy("enforce", false), &[])
    else {
        return;
    };
    let scenarios = scenarios(&tree);
    for scenario in &scenarios {
        tree.reset_victim();
        let needle = scenario.denied_path.as_ref().map(|p| format!(" of {p} ("));
        let seen = |needle: &Option<String>| {
            needle
                .as_ref()
                .map_or(0, |n| daemon.log().matches(n.as_str()).count())
        };
        let before = seen(&needle);
        let (code, output) = exec_through(&daemon, &scenario.script);
        // The client does not print events: the daemon logs them, a moment
        // after the kill.
        let logged = support::eventually(|| seen(&needle) > before);
        assert!(
            needle.is_none() || logged,
            "{}: the daemon logged the denial:\n{}",
            scenario.name,
            daemon.log()
        );
        check_code(scenario, code, &output);
    }
    let denials = scenarios.iter().filter(|s| s.denied_path.is_some()).count() as u64;
    let status = daemon.wait_for("every file denial counted", |s| s.denials.file >= denials);
    assert_eq!(status.denials.file, denials, "{status:#?}");
    assert!(daemon.log().contains("aa_event=\"denied_file\""));

    // Unconfined processes are untouched: the same reads outside it.
    let out = Command::new("cat")
        .arg(tree.path("allowed/mnt/secret"))
        .output()
        .expect("run cat");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "secret\n");
    let status = daemon.status();
    assert_eq!(status.denials.file, denials, "nothing new was denied");
}

#[test]
fn a_reload_that_removes_a_read_prefix_holds_from_the_moment_it_is_applied() {
    if !kernel_available("path_rules_reload") {
        return;
    }
    let tree = Tree::new();
    let Some(daemon) = Daemon::start("path_rules_reload", &tree.policy("enforce", true), &[])
    else {
        return;
    };
    let fifo = tree.path("writable/go");
    let c_fifo = CString::new(fifo.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: mkfifo with a valid path.
    assert_eq!(unsafe { libc::mkfifo(c_fifo.as_ptr(), 0o600) }, 0);
    let script = format!(
        "cat {extra} && read x < {fifo} && cat {extra}",
        extra = tree.show("extra/file"),
        fifo = fifo.display()
    );
    let socket = daemon.socket.clone();
    let confined = std::thread::spawn(move || {
        Command::new(env!("CARGO_BIN_EXE_aa-policyd"))
            .args(["exec", "--socket"])
            .arg(&socket)
            .args(["--", "sh", "-c", &script])
            .output()
            .expect("run aa-policyd exec")
    });
    // The first read is allowed; the process then waits on the fifo.
    let generation = daemon.status().generation;
    let waiting = support::eventually(|| daemon.status().confined.len() == 1);
    assert!(waiting, "the process is confined");
    std::thread::sleep(Duration::from_millis(200));
    std::fs::write(&daemon.policy, tree.policy("enforce", false)).expect("save the edit");
    daemon.wait_for("the edit applied", |s| {
        s.generation > generation
            && s.last_reload
                .as_ref()
                .is_some_and(|r| r.outcome.as_str() == "applied")
    });
    std::fs::write(&fifo, "go\n").expect("release the shell");
    let out = confined.join().expect("exec thread");
    assert_eq!(
        out.status.code(),
        Some(137),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "extra\n", "read once");
    // The daemon logs the event a moment after the kill.
    let denial = format!("denied read of {} (openat)", tree.show("extra/file"));
    assert!(
        support::eventually(|| daemon.log().contains(&denial)),
        "{}",
        daemon.log()
    );
}

#[test]
fn a_name_rewritten_while_the_kernel_uses_it_is_denied() {
    let Some(escape) = support::escape_helper("path_rules_name_race") else {
        return;
    };
    let tree = Tree::new();
    // Each try links the denied secret into `writable` while a sibling
    // thread blanks the name after the kernel copied it and before the
    // probe reads it back: the probe sees the name changed and denies.
    let out = exec_with_policy(
        "path_rules_name_race",
        &tree.policy("enforce", false),
        &[
            &escape.display().to_string(),
            "name-race",
            &tree.show("denied/secret"),
            &tree.show("writable/stolen"),
            "60",
        ],
    );
    let summary = out.stdout.lines().last().unwrap_or_default().to_owned();
    let counts: Vec<u32> = summary
        .split_whitespace()
        .filter_map(|word| word.parse().ok())
        .collect();
    assert_eq!(counts.len(), 3, "{summary}\n{}", out.stderr);
    assert_eq!(
        counts[0], 0,
        "no try may escape: {}\n{}",
        out.stdout, out.stderr
    );
    assert!(counts[1] > 0, "the tries are killed: {summary}");
}
