//! `aa-policyd exec` and `unload` through the real binary: exit statuses,
//! deny events on stderr, cleanup, and the error without privileges.

mod support;

use std::path::Path;
use std::process::{Command, Output};

fn aa(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aa-policyd"))
        .args(args)
        .output()
        .expect("run aa-policyd")
}

fn default_policy() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("policies/default.yaml")
        .display()
        .to_string()
}

/// Unloads the pin dir on drop, whatever the test did.
struct PinDir(std::path::PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = aa_policyd::loader::kernel::unload(&self.0);
    }
}

#[test]
fn exec_exits_with_the_command_status_or_128_plus_the_signal() {
    if !support::kernel_available("cli_exec") {
        return;
    }
    let pins = PinDir(support::unique_pin_dir("cli_exec"));
    let pin_dir = pins.0.display().to_string();

    let out = aa(&[
        "exec",
        "--pin-dir",
        &pin_dir,
        "--policy",
        &default_policy(),
        "--",
        "sh",
        "-c",
        "exit 3",
    ]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let no_write = dir.path().join("no-write.yaml");
    let text = std::fs::read_to_string(default_policy()).expect("read default");
    // @basic-io without write (and without writev/pwrite, which sh does not use).
    let basic_io_without_write = ["read", "close", "dup", "dup2", "dup3", "lseek", "pread64"]
        .map(|name| format!("      - {name}\n"))
        .concat();
    let text = text.replace("      - \"@basic-io\"\n", &basic_io_without_write);
    std::fs::write(&no_write, text).expect("write policy");
    let out = aa(&[
        "exec",
        "--pin-dir",
        &pin_dir,
        "--policy",
        &no_write.display().to_string(),
        "--",
        "sh",
        "-c",
        "echo hi",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(128 + 9), "{stderr}");
    assert!(
        stderr.contains("denied syscall write (1), not in the allowlist: killed"),
        "{stderr}"
    );

    let out = aa(&["unload", "--pin-dir", &pin_dir]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!pins.0.exists(), "unload removed the pin dir");
}

#[test]
fn exec_without_privileges_says_what_is_missing() {
    if Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("SKIPPED: setpriv is not installed");
        return;
    }
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        let out = aa(&["exec", "--policy", &default_policy(), "--", "true"]);
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("needs root"));
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = dir.path().join("p.yaml");
    std::fs::copy(default_policy(), &policy).expect("copy policy");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(env!("CARGO_BIN_EXE_aa-policyd"))
        .args([
            "exec",
            "--pin-dir",
            "/sys/fs/bpf/aa-test-unprivileged",
            "--policy",
        ])
        .arg(&policy)
        .args(["--", "true"])
        .output()
        .expect("run setpriv");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("loading eBPF probes needs root (CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN); running as uid 65534"),
        "{stderr}"
    );
    assert!(!Path::new("/sys/fs/bpf/aa-test-unprivileged").exists());
}
