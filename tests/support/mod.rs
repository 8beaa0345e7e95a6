//! Shared helpers for tests against the real kernel.
//!
//! Every kernel test gets its own pin dir and a guard that unloads it (links,
//! maps, pins) when the test ends, also on panic. Children a test starts are
//! killed by PID on drop, and only those. Without root or BPF the tests skip
//! loudly — unless `AA_REQUIRE_KERNEL=1` (CI), where skipping is a failure.

#![allow(dead_code)]

pub mod daemon;
pub mod netns;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use aa_policyd::delta::diff;
use aa_policyd::events::Event;
use aa_policyd::loader::kernel::{self, KernelLoader};
use aa_policyd::loader::process::{self, ConfinedChild, ExitStatus};
use aa_policyd::loader::{ApplyReport, Loader, LoaderError};
use aa_policyd::lower::lower;
use aa_policyd::policy::Policy;
use aa_policyd::ruleset::{Arch, RuleSet, SyscallRule};
use aya::maps::{MapData, RingBuf};

/// Why kernel tests cannot run here, if they cannot.
fn missing_kernel_support() -> Option<String> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Some("the kernel has no BTF (/sys/kernel/btf/vmlinux)".into());
    }
    None
}

/// A loader on a private pin dir, unloaded on drop.
pub struct KernelTest {
    loader: Option<KernelLoader>,
    pub pin_dir: PathBuf,
}

/// Whether kernel test `name` can run here; says loudly why not. Panics
/// instead when `AA_REQUIRE_KERNEL=1`. For tests whose kernel work is done
/// by another process (the daemon, `exec`): it loads nothing.
pub fn kernel_available(name: &str) -> bool {
    let Some(why) = missing_kernel_support() else {
        return true;
    };
    if std::env::var("AA_REQUIRE_KERNEL").as_deref() == Ok("1") {
        panic!("kernel test {name} cannot run ({why}) and AA_REQUIRE_KERNEL=1 forbids skipping");
    }
    eprintln!("SKIPPED kernel test {name}: {why} (set AA_REQUIRE_KERNEL=1 to make this a failure)");
    false
}

/// Opens a loader for one test, or `None` when kernel tests are skipped
/// (see `kernel_available`).
pub fn kernel_test(name: &str) -> Option<KernelTest> {
    if !kernel_available(name) {
        return None;
    }
    let pin_dir = unique_pin_dir(name);
    match KernelLoader::open(&pin_dir) {
        Ok(loader) => Some(KernelTest {
            loader: Some(loader),
            pin_dir,
        }),
        Err(error) => {
            let _ = kernel::unload(&pin_dir);
            panic!("{name}: opening the loader failed: {error}");
        }
    }
}

pub fn unique_pin_dir(name: &str) -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    PathBuf::from(format!(
        "/sys/fs/bpf/aa-test-{}-{n}-{name}",
        std::process::id()
    ))
}

impl Drop for KernelTest {
    fn drop(&mut self) {
        drop(self.loader.take()); // releases the pin dir's lock
        if let Err(error) = kernel::unload(&self.pin_dir) {
            eprintln!("cleanup of {} failed: {error}", self.pin_dir.display());
        }
    }
}

impl KernelTest {
    pub fn loader(&mut self) -> &mut KernelLoader {
        self.loader.as_mut().expect("a loader is open")
    }

    /// Closes the loader (every fd, as when its process exits) and opens a
    /// new one on the same pin dir, which adopts what is pinned there.
    pub fn restart_loader(&mut self) {
        drop(self.loader.take());
        self.loader = Some(KernelLoader::open(&self.pin_dir).expect("reopen the loader"));
    }

    /// Applies `rules` as the loader would for a reload.
    pub fn apply_rules(&mut self, rules: &RuleSet) -> Result<ApplyReport, LoaderError> {
        let applied = self.loader().applied()?;
        self.loader().apply(&diff(&applied.rules, rules), None)
    }

    /// Applies a policy written as YAML.
    pub fn apply_yaml(&mut self, yaml: &str) -> ApplyReport {
        let rules = rules_from_yaml(yaml);
        self.apply_rules(&rules).expect("apply policy")
    }

    /// Starts `argv` confined; the child is killed on drop if still running.
    pub fn spawn(&mut self, argv: &[&str]) -> Child {
        let argv: Vec<OsString> = argv.iter().map(OsString::from).collect();
        let child = process::spawn_confined(self.loader(), &argv).expect("spawn confined");
        Child { inner: Some(child) }
    }

    pub fn events(&mut self) -> EventReader {
        EventReader {
            ring: self.loader().take_events().expect("event ring buffer"),
            seen: Vec::new(),
        }
    }
}

pub fn rules_from_yaml(yaml: &str) -> RuleSet {
    let policy = Policy::parse_str(yaml, Path::new("test.yaml")).expect("test policy is valid");
    lower(&policy, Arch::native()).rules
}

/// The shipped default policy, lowered.
pub fn default_rules() -> RuleSet {
    rules_from_yaml(&default_policy_text())
}

/// `rules` with syscall `name` removed from the allowlist.
pub fn without_syscall(mut rules: RuleSet, name: &str) -> RuleSet {
    let number = Arch::native().syscall_number(name).expect("known syscall");
    if let SyscallRule::Allow(set) = &mut rules.syscalls {
        assert!(
            set.contains(number),
            "{name} must be allowed before it can be removed"
        );
        set.remove(number);
    }
    rules
}

/// A child this test started; killed and reaped on drop unless waited.
pub struct Child {
    inner: Option<ConfinedChild>,
}

impl Child {
    pub fn pid(&self) -> u32 {
        self.inner.as_ref().map_or(0, |c| c.pid)
    }

    pub fn wait(mut self) -> ExitStatus {
        let child = self.inner.take().expect("not waited yet");
        child.wait().expect("wait for child")
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Some(child) = self.inner.take() {
            // SAFETY: our own unreaped child: the PID is still ours.
            unsafe { libc::kill(child.pid as libc::pid_t, libc::SIGKILL) };
            let _ = child.wait();
        }
    }
}

/// An unconfined child, killed and reaped on drop.
pub struct Plain(pub std::process::Child);

impl Drop for Plain {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads decoded events from the ring buffer.
pub struct EventReader {
    ring: RingBuf<MapData>,
    pub seen: Vec<Event>,
}

impl EventReader {
    /// Waits up to 2 s for an event matching `want`.
    pub fn wait_for(&mut self, want: impl Fn(&Event) -> bool) -> Option<Event> {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let seen = &mut self.seen;
            aa_policyd::events::drain(&mut self.ring, |event| seen.push(event));
            if let Some(event) = self.seen.iter().find(|e| want(e)) {
                return Some(event.clone());
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Polls `condition` for up to 3 s.
pub fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// The escape helper (`tests/helpers/escape.c`), built once per test
/// binary into cargo's test temp dir. `None`, said loudly, when no C
/// compiler or liburing is installed, unless `AA_REQUIRE_KERNEL=1` (CI),
/// where that is a failure.
pub fn escape_helper(name: &str) -> Option<PathBuf> {
    static BUILT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/helpers/escape.c");
        let binary =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("escape-{}", std::process::id()));
        let out = std::process::Command::new("cc")
            .args(["-O2", "-Wall", "-o"])
            .arg(&binary)
            .arg(&source)
            .args(["-luring", "-lpthread"])
            .output()
            .map_err(|e| format!("running cc: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cc failed (is liburing-dev installed?): {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(binary)
    });
    match built {
        Ok(path) => Some(path.clone()),
        Err(why) if std::env::var("AA_REQUIRE_KERNEL").as_deref() == Ok("1") => {
            panic!("kernel test {name} needs the escape helper: {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED kernel test {name}: {why}");
            None
        }
    }
}

/// What one `aa-policyd exec` run printed and how it ended.
pub struct ExecOutcome {
    /// The exit code (128 + signal when the command was killed).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// The probes' failure counters after the run (all must stay 0).
    pub faults: aa_policyd::control::wire::ProbeFaults,
}

/// Runs `argv` under `aa-policyd exec --policy` with `policy_text`, on a
/// pin dir of its own that is unloaded afterwards.
pub fn exec_with_policy(name: &str, policy_text: &str, argv: &[&str]) -> ExecOutcome {
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, policy_text).expect("write policy");
    let pin_dir = unique_pin_dir(name);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_aa-policyd"))
        .arg("exec")
        .arg("--policy")
        .arg(&policy)
        .arg("--pin-dir")
        .arg(&pin_dir)
        .arg("--")
        .args(argv)
        .output()
        .expect("run aa-policyd exec");
    let counters = kernel::pinned_counters(&pin_dir)
        .map(|pinned| pinned.read().expect("read the probes' counters"))
        .unwrap_or_default();
    if let Err(error) = kernel::unload(&pin_dir) {
        eprintln!("cleanup of {} failed: {error}", pin_dir.display());
    }
    ExecOutcome {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        faults: aa_policyd::control::wire::ProbeFaults {
            registry_full: counters.registry_full,
            mark_failed: counters.mark_failed,
            untraced: counters.untraced,
            unguarded_exit: counters.unguarded_exit,
        },
    }
}

/// Whether `pid` is alive (not a zombie).
pub fn process_alive_by_pid(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with(|c| c != 'Z' && c != 'X'))
        })
        .unwrap_or(false)
}

/// Writes a registry entry for `pid` straight into the pinned CONFINED map,
/// as an exit the probes missed would leave it.
pub fn insert_stale_registry_entry(pin_dir: &Path, pid: u32) {
    let path = kernel::PinLayout::new(pin_dir).map("CONFINED");
    let data = MapData::from_pin(&path).expect("open the pinned registry");
    let mut registry: aya::maps::HashMap<MapData, u32, aa_policyd::loader::abi::Confined> =
        aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data)).expect("a hash map");
    registry
        .insert(pid, aa_policyd::loader::abi::Confined::default(), 0)
        .expect("insert");
}

/// The shipped default policy's text, with read access added for what the
/// tests themselves run from outside its allowlist: this source tree (the
/// cwd, and helpers built under `target/`) and the python3 on PATH (a
/// pyenv install lives under the home directory).
pub fn default_policy_text() -> String {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/default.yaml"),
    )
    .expect("read default policy");
    let mut extra = vec![env!("CARGO_MANIFEST_DIR").to_owned()];
    extra.extend(python_prefix());
    let list_end = "/workspace, /home]";
    assert!(
        text.contains(list_end),
        "the default read allowlist ends with {list_end}"
    );
    text.replacen(
        list_end,
        &format!("/workspace, /home, {}]", extra.join(", ")),
        1,
    )
}

/// The installation prefix of the python3 on PATH (`<prefix>/bin/python3`,
/// or pyenv's `<root>/shims/python3`).
fn python_prefix() -> Option<String> {
    let path = std::env::var_os("PATH")?;
    let python = std::env::split_paths(&path)
        .map(|dir| dir.join("python3"))
        .find(|candidate| candidate.is_file())?;
    let real = std::fs::canonicalize(python).ok()?;
    Some(real.parent()?.parent()?.display().to_string())
}
