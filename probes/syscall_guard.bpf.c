/* Syscall guard: SIGKILL (enforce) or report (audit) a confined task's
 * syscall that the active generation does not allow, or whose arguments
 * would step outside the confinement.
 *
 * Why tp_btf/sys_enter: it is the cheapest hook every syscall passes on
 * 6.18 (the plain `tracepoint` type costs ~20 ns more per syscall on every
 * process), and lsm/fentry programs are refused here. The kill lands when
 * the syscall returns, so the denied call itself still runs: this is a
 * tripwire, not prevention (processes started by `aa-policyd exec` also get
 * a seccomp filter that prevents).
 *
 * Hot path: an unconfined task whose pt_regs address is this CPU's
 * GUARD_CACHE entry pays one inlined per-CPU load and a compare (see
 * aa_policy.h for why that is sound). Everyone else takes guard_slow once,
 * which refreshes the entry. The loader detaches every hook while nothing
 * is confined.
 *
 * Beyond the allowlist, checked on arguments held in registers (never user
 * memory, so no other thread can change them after the check):
 * - `bpf` is never allowed: it could detach the hooks or edit the maps;
 * - under an egress allowlist, `socket`/`socketpair` only for unix, inet,
 *   inet6 and netlink (a packet or vsock socket reaches destinations the
 *   allowlist never sees);
 * - unlink and rename of the loader's pins (by the last path component,
 *   which is read from user memory: a racing thread can change it after
 *   the check, so this catches the attempt, while the loader's own
 *   references keep the hooks attached and the daemon puts a pin back);
 * - ptrace-class access (`ptrace` attach, `process_vm_readv/writev`,
 *   `pidfd_getfd`, `process_madvise`) only to processes that are confined
 *   too. Targets are judged by the registry of confined processes, by their
 *   number in the initial PID namespace: a caller in another PID namespace
 *   is refused such access altogether.
 */
#include "aa_policy.h"

/* The number of the process a ptrace-class call targets, in the initial
 * PID namespace, or -1 when it cannot be told. */
static __always_inline long ptrace_target(struct task_struct *task, struct pt_regs *regs, long nr)
{
	if (nr == AA_NR_PIDFD_GETFD || nr == AA_NR_PROCESS_MADVISE) {
		struct file *file = aa_fd_file(task, regs->di);
		if (!file || BPF_CORE_READ(file, f_inode, i_sb, s_magic) != AA_PIDFS_MAGIC)
			return -1;
		struct pid *pid = BPF_CORE_READ(file, f_inode, i_private);
		return pid ? BPF_CORE_READ(pid, numbers[0].nr) : -1;
	}
	/* A number is read in the caller's PID namespace. */
	if (task->thread_pid->level != 0)
		return -1;
	return nr == AA_NR_PTRACE ? (long)regs->si : (long)regs->di;
}

/* Whether an unlink or rename names one of the loader's pins. */
static __always_inline int touches_pins(long nr, struct pt_regs *regs)
{
	switch (nr) {
	case AA_NR_UNLINK:
		return aa_names_pin(regs->di, 0);
	case AA_NR_UNLINKAT:
		return aa_names_pin(regs->si, 0);
	case AA_NR_RENAME:
		return aa_names_pin(regs->di, 0) || aa_names_pin(regs->si, 0);
	case AA_NR_RENAMEAT:
	case AA_NR_RENAMEAT2:
		return aa_names_pin(regs->si, 0) || aa_names_pin(regs->r10, 0);
	}
	return 0;
}

static __always_inline int is_ptrace_class(long nr, struct pt_regs *regs)
{
	if (nr == AA_NR_PTRACE)
		return regs->di == AA_PTRACE_ATTACH || regs->di == AA_PTRACE_SEIZE;
	return nr == AA_NR_PROCESS_VM_READV || nr == AA_NR_PROCESS_VM_WRITEV ||
	       nr == AA_NR_PIDFD_GETFD || nr == AA_NR_PROCESS_MADVISE;
}

/* Everything but the cached unconfined case, kept out of the hot function
 * so that its frame stays minimal. */
static __attribute__((noinline)) int guard_slow(struct pt_regs *regs, long id, __u64 *known)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct aa_task_mark *mark = aa_mark_of(task);
	if (mark)
		*known = 0;
	else
		*known = (__u64)regs;
	if (!mark)
		return 0;
	mark->guarded++;

	struct aa_generation *gen = aa_active_generation();
	if (!gen)
		return 0;
	__u32 mode = gen->mode;

	/* ia32 (int 0x80) and x32 entries use other tables, which the checks
	 * below are not written for: never allowed to a confined task. */
	__u32 compat = (task->thread_info.status & AA_TS_COMPAT) || (id & AA_X32_SYSCALL_BIT);
	if (mark->flags & AA_MARK_DOOMED) {
		aa_deny(mode, id, compat, AA_REASON_DOOMED, 0);
		return 0;
	}
	if (compat || !aa_syscall_allowed(gen, id)) {
		aa_deny(mode, id, compat, AA_REASON_NOT_ALLOWED, 0);
		return 0;
	}
	if (id == AA_NR_BPF) {
		aa_deny(mode, id, 0, AA_REASON_INTEGRITY, 0);
		return 0;
	}
	if ((id == AA_NR_SOCKET || id == AA_NR_SOCKETPAIR) && gen->egress_restricted &&
	    !aa_socket_family_allowed(regs->di)) {
		aa_deny(mode, id, 0, AA_REASON_SOCKET_FAMILY, (__u32)regs->di);
		return 0;
	}
	if (touches_pins(id, regs)) {
		aa_deny(mode, id, 0, AA_REASON_PIN, 0);
		return 0;
	}
	if (is_ptrace_class(id, regs)) {
		long target = ptrace_target(task, regs, id);
		if (target < 0 || !aa_process_confined((__u32)target))
			aa_deny(mode, id, 0, AA_REASON_PTRACE_TARGET, (__u32)target);
	}
	return 0;
}

SEC("tp_btf/sys_enter")
int syscall_guard(unsigned long long *ctx)
{
	__u32 zero = 0;
	__u64 *known = bpf_map_lookup_elem(&GUARD_CACHE, &zero);
	if (!known || *known == ctx[0])
		return 0;
	return guard_slow((struct pt_regs *)ctx[0], (long)ctx[1], known);
}

char LICENSE[] SEC("license") = "GPL";
