//! Kernel-side costs, measured side by side in one run (root only):
//!
//! 1. ns per `getppid()`, and per `open`+`close` of a file the policy lets
//!    it read (a short and a deep path), for a worker process under five
//!    setups, in interleaved rounds, reporting medians: nothing attached;
//!    empty programs on the same hooks, sys_enter and sys_exit (the floor);
//!    every hook attached but the worker not confined; the worker confined
//!    and the call allowed (for opens: the path resolved and matched against
//!    the read allowlist); a seccomp allow-all filter. Targets: unconfined
//!    within a few ns of the floor; nothing confined = hooks detached =
//!    baseline.
//! 2. apply cost of a one-op delta vs a delta replacing 10k egress entries,
//!    with the map-op counts.
//!
//! Run: `sudo cargo bench --bench kernel`. Workers are this binary re-run
//! with `__worker`; only processes this benchmark starts are confined.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use aa_policyd::delta::diff;
use aa_policyd::loader::Loader;
use aa_policyd::loader::kernel::{self, KernelLoader};
use aa_policyd::loader::process::spawn_confined;
use aa_policyd::lower::lower;
use aa_policyd::policy::Policy;
use aa_policyd::ruleset::{
    Access, Arch, EgressRule, IpCidr, PathPrefix, PathRuleKey, RuleSet, Verdict,
};
use aya::programs::BtfTracePoint;
use aya::{Btf, EbpfLoader};

/// What a worker times, and how many times.
#[derive(Clone, Copy)]
enum Workload<'a> {
    Getppid,
    Open(&'a Path),
}

impl Workload<'_> {
    fn iterations(self) -> u64 {
        match self {
            Workload::Getppid => 2_000_000,
            Workload::Open(_) => 50_000,
        }
    }
}

const ROUNDS: usize = 31;
static FLOOR_OBJ: &[u8] = aya::include_bytes_aligned!("../probes/bench_floor.bpf.o");

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("__worker") {
        worker(&args[2..]);
        return;
    }
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        println!("kernel benchmarks skipped: they need root (sudo cargo bench --bench kernel)");
        return;
    }
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/aa-bench-{}", std::process::id()));
    let result = std::panic::catch_unwind(|| run(&pin_dir));
    if let Err(error) = kernel::unload(&pin_dir) {
        eprintln!("cleanup of {} failed: {error}", pin_dir.display());
    }
    if result.is_err() {
        std::process::exit(1);
    }
}

fn run(pin_dir: &Path) {
    let mut loader = KernelLoader::open(pin_dir).expect("open loader");
    let policy_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/default.yaml");
    let policy = Policy::load(&policy_path).expect("default policy");
    let mut rules = lower(&policy, Arch::native()).rules;
    // The confined worker is this binary, outside the default read allowlist.
    let exe = std::env::current_exe().expect("current exe");
    let exe_dir = exe.parent().expect("the binary's directory");
    rules.paths.rules.insert(
        PathRuleKey {
            access: Access::Read,
            prefix: PathPrefix::parse(&exe_dir.display().to_string()).expect("absolute path"),
        },
        Verdict::Allow,
    );
    let applied = loader.applied().expect("applied");
    loader
        .apply(&diff(&applied.rules, &rules), None)
        .expect("apply default policy");
    // Under /tmp, which the default policy lets a confined process read.
    let files = tempfile::tempdir().expect("temp dir");
    let short = files.path().join("file");
    let deep_dir = (0..16).fold(files.path().to_owned(), |dir, i| {
        dir.join(format!("level{i}"))
    });
    std::fs::create_dir_all(&deep_dir).expect("mkdir");
    let deep = deep_dir.join("file");
    for file in [&short, &deep] {
        std::fs::write(file, "x").expect("write bench file");
    }
    hot_path(&mut loader, "getppid()", Workload::Getppid);
    hot_path(
        &mut loader,
        &format!(
            "open+close of {} ({} components)",
            short.display(),
            short.components().count() - 1
        ),
        Workload::Open(&short),
    );
    hot_path(
        &mut loader,
        &format!(
            "open+close of a file {} components deep",
            deep.components().count() - 1
        ),
        Workload::Open(&deep),
    );
    apply_cost(&mut loader, &rules);
}

#[derive(Clone, Copy, PartialEq)]
enum Setup {
    Nothing,
    Floor,
    GuardUnconfined,
    GuardConfined,
    Seccomp,
}

const SETUPS: [(Setup, &str); 5] = [
    (Setup::Nothing, "nothing attached (baseline)"),
    (Setup::Floor, "empty programs on sys_enter+exit (floor)"),
    (
        Setup::GuardUnconfined,
        "guard attached, caller not confined",
    ),
    (
        Setup::GuardConfined,
        "guard attached, caller confined, allowed",
    ),
    (Setup::Seccomp, "seccomp allow-all filter"),
];

fn hot_path(loader: &mut KernelLoader, what: &str, workload: Workload) {
    let btf = Btf::from_sys_fs().expect("kernel BTF");
    let mut floor = EbpfLoader::new()
        .btf(Some(&btf))
        .load(FLOOR_OBJ)
        .expect("load floor");
    for (program, tracepoint) in [
        ("bench_floor", "sys_enter"),
        ("bench_floor_exit", "sys_exit"),
    ] {
        let prog: &mut BtfTracePoint = floor
            .program_mut(program)
            .expect("floor program")
            .try_into()
            .expect("tp_btf");
        prog.load(tracepoint, &btf).expect("load floor program");
    }

    let dir = tempfile::tempdir().expect("temp dir");
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); SETUPS.len()];
    for round in 0..ROUNDS {
        for (index, (setup, _)) in SETUPS.iter().enumerate() {
            let out = dir.path().join(format!("r{round}-{index}"));
            loader.detach_hooks().expect("detach");
            let floor_links: Vec<_> = if *setup == Setup::Floor {
                ["bench_floor", "bench_floor_exit"]
                    .iter()
                    .map(|program| {
                        let prog: &mut BtfTracePoint = floor
                            .program_mut(program)
                            .expect("floor program")
                            .try_into()
                            .expect("tp_btf");
                        let id = prog.attach().expect("attach floor");
                        prog.take_link(id).expect("floor link")
                    })
                    .collect()
            } else {
                Vec::new()
            };
            if *setup == Setup::GuardUnconfined {
                loader.attach_hooks().expect("attach hooks");
            }
            let ns = match setup {
                Setup::GuardConfined => {
                    let argv = worker_argv(&out, workload, false);
                    let child = spawn_confined(loader, &argv).expect("spawn confined worker");
                    child.wait().expect("worker");
                    read_ns(&out)
                }
                _ => {
                    let argv = worker_argv(&out, workload, *setup == Setup::Seccomp);
                    let status = Command::new(&argv[0])
                        .args(&argv[1..])
                        .status()
                        .expect("worker");
                    assert!(status.success());
                    read_ns(&out)
                }
            };
            drop(floor_links);
            samples[index].push(ns);
        }
    }
    loader.detach_hooks().expect("detach");

    let medians: Vec<f64> = samples.iter_mut().map(|s| median(s)).collect();
    let floor_ns = medians[1];
    println!(
        "\nns per {what}, median of {ROUNDS} interleaved rounds of {} calls:",
        workload.iterations()
    );
    for ((_, name), ns) in SETUPS.iter().zip(&medians) {
        println!(
            "  {name:<44} {ns:7.1} ns   ({:+6.1} ns vs floor, {:.3}x baseline)",
            ns - floor_ns,
            ns / medians[0]
        );
    }
}

fn apply_cost(loader: &mut KernelLoader, base: &RuleSet) {
    let with_rules = |offset: u32| {
        let mut rules = base.clone();
        rules.egress.rules = (0..10_000u32)
            .map(|i| EgressRule {
                net: IpCidr::host(std::net::Ipv4Addr::from(0x0a00_0000 + offset + i).into()),
                port: Some(443),
            })
            .collect();
        rules
    };
    let first = with_rules(0);
    let replaced = with_rules(100_000);
    let mut plus_one = first.clone();
    plus_one.egress.rules.insert(EgressRule {
        net: IpCidr::host(std::net::Ipv4Addr::new(11, 0, 0, 1).into()),
        port: None,
    });
    let apply = |loader: &mut KernelLoader, target: &RuleSet| {
        let applied = loader.applied().expect("applied").rules;
        let delta = diff(&applied, target);
        let start = Instant::now();
        let report = loader.apply(&delta, None).expect("apply");
        (
            start.elapsed().as_secs_f64() * 1e3,
            delta.len(),
            report.map_ops,
        )
    };
    apply(loader, &first);
    let (mut one, mut many) = (Vec::new(), Vec::new());
    let (mut one_ops, mut many_ops) = ((0, 0), (0, 0));
    for _ in 0..7 {
        let (ms, ops, map_ops) = apply(loader, &plus_one);
        one.push(ms);
        one_ops = (ops, map_ops);
        apply(loader, &first);
        let (ms, ops, map_ops) = apply(loader, &replaced);
        many.push(ms);
        many_ops = (ops, map_ops);
        apply(loader, &first);
    }
    let (one_ms, many_ms) = (median(&mut one), median(&mut many));
    println!("\napply cost with 10k egress rules in force, median of 7 interleaved rounds:");
    println!(
        "  one-op delta (add 1 rule)        {one_ms:8.2} ms  {:6} delta ops {:7} map ops",
        one_ops.0, one_ops.1
    );
    println!(
        "  replace all 10k rules            {many_ms:8.2} ms  {:6} delta ops {:7} map ops",
        many_ops.0, many_ops.1
    );
    println!(
        "  ratio                            {:8.1}x",
        many_ms / one_ms
    );
    println!(
        "  (each apply includes one RCU grace period, ~10 ms, before the old slot is rewritten)"
    );
}

fn worker_argv(out: &Path, workload: Workload, seccomp: bool) -> Vec<OsString> {
    let exe = std::env::current_exe().expect("current exe");
    let mut argv = vec![
        exe.into_os_string(),
        "__worker".into(),
        workload.iterations().to_string().into(),
        out.as_os_str().to_owned(),
        match workload {
            Workload::Getppid => OsString::from("-"),
            Workload::Open(path) => path.as_os_str().to_owned(),
        },
    ];
    if seccomp {
        argv.push("seccomp".into());
    }
    argv
}

fn read_ns(path: &Path) -> f64 {
    std::fs::read_to_string(path)
        .expect("worker result")
        .trim()
        .parse()
        .expect("number")
}

fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Times `iterations` raw getppid syscalls (file `-`) or open+close pairs
/// of a file, and writes ns per call (per pair) to `out`.
fn worker(args: &[String]) {
    let iterations: u64 = args[0].parse().expect("iterations");
    let out = &args[1];
    let file = std::ffi::CString::new(args[2].as_str()).expect("path");
    if args.get(3).map(String::as_str) == Some("seccomp") {
        install_allow_all_seccomp();
    }
    pin_to_cpu(1);
    let call = || {
        if args[2] == "-" {
            // SAFETY: getppid has no arguments and cannot fail.
            unsafe { libc::syscall(libc::SYS_getppid) };
        } else {
            // SAFETY: a valid path; the descriptor is closed right away.
            let fd = unsafe { libc::open(file.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
            assert!(fd >= 0, "open {}", args[2]);
            // SAFETY: our own descriptor.
            unsafe { libc::close(fd) };
        }
    };
    for _ in 0..iterations / 10 {
        call();
    }
    let start = Instant::now();
    for _ in 0..iterations {
        call();
    }
    let ns = start.elapsed().as_nanos() as f64 / iterations as f64;
    std::fs::write(out, format!("{ns}\n")).expect("write result");
}

/// Every worker runs on the same CPU, so setups differ only in the hook.
fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t with one bit set, for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn install_allow_all_seccomp() {
    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    let filter = [libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: SECCOMP_RET_ALLOW,
    }];
    let program = libc::sock_fprog {
        len: 1,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: a valid one-instruction classic BPF program.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        assert_eq!(
            libc::syscall(
                libc::SYS_seccomp,
                1, /* SET_MODE_FILTER */
                0,
                &program as *const libc::sock_fprog
            ),
            0
        );
    }
}
