/* Syscall guard: SIGKILL (enforce) or report (audit) a confined task's
 * syscall that the active generation does not allow, or whose arguments
 * would step outside the confinement.
 *
 * Why tp_btf/sys_enter: it is the cheapest hook every syscall passes on
 * 6.18 (the plain `tracepoint` type costs ~20 ns more per syscall on every
 * process), and lsm/fentry programs are refused here. The kill lands when
 * the syscall returns, so the denied call itself still runs: this is a
 * tripwire, not prevention.
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
 *   `pidfd_getfd`, `process_madvise`, `kcmp`, `prlimit64` of another
 *   process) only to processes that are confined too. Targets are judged
 *   by the registry of confined processes, by their number in the loader's
 *   PID namespace: a caller in another PID namespace is refused such access
 *   altogether;
 * - no signal (other than 0) to the loader holding the pin dir (the daemon
 *   or `exec`): by any of its thread ids, by a pidfd, by its process group,
 *   or to every process (kill -1); nor the loader as a file's SIGIO/SIGURG
 *   owner (fcntl F_SETOWN/F_SETOWN_EX, ioctl FIOSETOWN/SIOCSPGRP). With the
 *   loader gone the pins alone would hold the hooks. Like every check
 *   here this is a tripwire: the denied call itself runs.
 */
#include "aa_policy.h"

/* The number (loader's PID namespace) of the task behind pidfd `fd`, or -1. */
static __always_inline long pidfd_target(struct task_struct *task, long fd)
{
	struct file *file = aa_fd_file(task, fd);
	if (!file || BPF_CORE_READ(file, f_inode, i_sb, s_magic) != AA_PIDFS_MAGIC)
		return -1;
	return aa_loader_number((__u64)BPF_CORE_READ(file, f_inode, i_private));
}

/* Whether numbers the caller passes can be compared with the registry. */
static __always_inline int numbers_are_global(struct task_struct *task)
{
	return aa_numbers_comparable(task);
}

/* Whether a ptrace-class call reaches a process outside the confinement;
 * `target` gets the number it names (-1 when it cannot be told). */
static __always_inline int reaches_outside(struct task_struct *task, struct pt_regs *regs, long nr,
					   long *target)
{
	long first = -1, second = 0;
	switch (nr) {
	case AA_NR_PTRACE:
		if (regs->di != AA_PTRACE_ATTACH && regs->di != AA_PTRACE_SEIZE)
			return 0;
		first = numbers_are_global(task) ? (long)regs->si : -1;
		break;
	case AA_NR_PROCESS_VM_READV:
	case AA_NR_PROCESS_VM_WRITEV:
		first = numbers_are_global(task) ? (int)regs->di : -1;
		break;
	case AA_NR_KCMP:
		first = numbers_are_global(task) ? (int)regs->di : -1;
		second = numbers_are_global(task) ? (int)regs->si : -1;
		break;
	case AA_NR_PRLIMIT64:
		/* 0 is the caller itself. */
		if ((int)regs->di == 0 || aa_loader_number(aa_pid_address(&task->group_leader->thread_pid)) == (int)regs->di)
			return 0;
		first = numbers_are_global(task) ? (int)regs->di : -1;
		break;
	case AA_NR_PIDFD_GETFD:
	case AA_NR_PROCESS_MADVISE:
		first = pidfd_target(task, (int)regs->di);
		break;
	default:
		return 0;
	}
	*target = first;
	if (first < 0 || !aa_process_confined(first))
		return 1;
	*target = second;
	return second != 0 && (second < 0 || !aa_process_confined(second));
}

/* For fcntl(F_SETOWN, F_SETOWN_EX) and ioctl(FIOSETOWN, SIOCSPGRP): the
 * owner being set (a pid, or -pgid for a process group) in `target`;
 * returns 0 for any other call. An owner that cannot be read from the
 * caller's memory counts as every process (-1 is refused). */
static __always_inline int io_owner(struct pt_regs *regs, long nr, long *target)
{
	int owner = 0;
	if (nr == AA_NR_FCNTL) {
		int cmd = (int)regs->si;
		if (cmd == 8 /* F_SETOWN */) {
			*target = (int)regs->dx;
			return 1;
		}
		if (cmd != 15 /* F_SETOWN_EX */)
			return 0;
		struct {
			int type;
			int pid;
		} owner_ex;
		if (bpf_probe_read_user(&owner_ex, sizeof(owner_ex), (const void *)regs->dx)) {
			*target = -1;
			return 1;
		}
		*target = owner_ex.type == 2 /* F_OWNER_PGRP */ ? -(long)owner_ex.pid : owner_ex.pid;
		return 1;
	}
	unsigned int cmd = (unsigned int)regs->si;
	if (cmd != 0x8901 /* FIOSETOWN */ && cmd != 0x8902 /* SIOCSPGRP */)
		return 0;
	if (bpf_probe_read_user(&owner, sizeof(owner), (const void *)regs->dx)) {
		*target = -1;
		return 1;
	}
	*target = owner;
	return 1;
}

/* Whether a signal-sending call would signal the loader; `target` gets the
 * number it names. */
static __always_inline int signals_loader(struct task_struct *task, struct pt_regs *regs, long nr,
					  long *target)
{
	/* Process numbers and signals are ints: the upper half of the register
	 * is not part of the argument. */
	int sig;
	switch (nr) {
	case AA_NR_KILL:
	case AA_NR_TKILL:
	case AA_NR_RT_SIGQUEUEINFO:
		*target = (int)regs->di;
		sig = (int)regs->si;
		break;
	case AA_NR_TGKILL:
		if (numbers_are_global(task) && (int)regs->dx != 0 && (int)regs->si > 0 &&
		    aa_is_loader((int)regs->si)) {
			*target = (int)regs->si;
			return 1;
		}
		*target = (int)regs->di;
		sig = (int)regs->dx;
		break;
	case AA_NR_RT_TGSIGQUEUEINFO:
		*target = (int)regs->di;
		sig = (int)regs->dx;
		break;
	case AA_NR_PIDFD_SEND_SIGNAL:
		*target = pidfd_target(task, (int)regs->di);
		return (int)regs->si != 0 && *target > 0 && aa_is_loader(*target);
	case AA_NR_FCNTL:
	case AA_NR_IOCTL:
		/* Who receives SIGIO/SIGURG from a file: the signal comes later, so
		 * the owner is judged when it is set. 0 clears it. */
		if (!io_owner(regs, nr, target))
			return 0;
		if (*target == 0)
			return 0;
		sig = 1;
		break;
	default:
		return 0;
	}
	/* Signal 0 only asks whether the target exists; a number of another
	 * PID namespace never names the loader. */
	if (sig == 0 || !numbers_are_global(task))
		return 0;
	if (*target > 0)
		return aa_is_loader(*target);
	if (nr != AA_NR_KILL && nr != AA_NR_FCNTL && nr != AA_NR_IOCTL)
		return 0;
	if (*target == -1 && nr == AA_NR_KILL)
		return 1; /* every process the caller may signal */
	__u32 zero = 0;
	struct aa_config *config = bpf_map_lookup_elem(&CONFIG, &zero);
	if (!config)
		return 1;
	long group = *target == 0 ? aa_loader_number((__u64)BPF_CORE_READ(task, signal, pids[2]))
				  : -*target;
	return group == config->loader_pgid;
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

	/* Names the file probe will read again at exit: keep their bytes. */
	__u64 first, second;
	int kind = aa_user_args(id, regs, &first, &second);
	if (kind && aa_has_path_rules(gen)) {
		struct aa_name_check *check = bpf_task_storage_get(&NAME_CHECK, task, 0,
								   BPF_LOCAL_STORAGE_GET_F_CREATE);
		if (check) {
			aa_keep_user_args(check, first, second, kind);
			check->seq = mark->guarded;
			check->nr = id;
		}
	}

	/* ia32 (int 0x80) and x32 entries use other tables, which the checks
	 * below are not written for: never allowed to a confined task. (-1, no
	 * syscall, has bit 30 set but is not an x32 entry.) */
	__u32 compat = (task->thread_info.status & AA_TS_COMPAT) || (id >= 0 && (id & AA_X32_SYSCALL_BIT));
	long target = 0;
	__u32 reason;
	if (mark->flags & AA_MARK_DOOMED)
		reason = AA_REASON_DOOMED;
	else if (compat || !aa_syscall_allowed(gen, id))
		reason = AA_REASON_NOT_ALLOWED;
	else if (id == AA_NR_BPF)
		reason = AA_REASON_INTEGRITY;
	else if ((id == AA_NR_SOCKET || id == AA_NR_SOCKETPAIR) && gen->egress_restricted &&
		 !aa_socket_family_allowed((int)regs->di, (int)regs->si)) {
		reason = AA_REASON_SOCKET_FAMILY;
		target = (int)regs->di;
	} else if (aa_touches_pins(id, regs))
		reason = AA_REASON_PIN;
	else if (reaches_outside(task, regs, id, &target))
		reason = AA_REASON_PTRACE_TARGET;
	else if (signals_loader(task, regs, id, &target))
		reason = AA_REASON_LOADER;
	else
		return 0;
	aa_deny_task(task, mark, mode, id, compat, reason, (__u32)target);
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
