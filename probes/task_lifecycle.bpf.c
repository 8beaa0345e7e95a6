/* Confinement identity and process tracking: every task a confined task
 * creates is confined; the registry of confined processes follows creations
 * and exits; execs of confined processes are reported.
 *
 * Why task storage and not a PID-keyed map: confinement belongs to the task.
 * A reused PID is a new task with no storage, so it can never inherit a mark,
 * even if a mark was written late or an exit was missed. The CONFINED hash
 * exists only because task storage cannot be enumerated from userspace; it is
 * kept here, off the syscall hot path, for status, the guard and restarts.
 *
 * Why task_newtask and not sched_process_fork: io_uring's worker and SQPOLL
 * threads are created by create_io_thread(), which never fires
 * sched_process_fork; task_newtask fires in copy_process() for every new
 * task, before it can first run, with the kernel's own copy of the clone
 * flags (so clone3's flags in user memory cannot be swapped after a check).
 */
#include "aa_policy.h"

/* CPUs whose GUARD_CACHE entry a new confined task clears. */
#define AA_MAX_CPUS 4096

/* `current` is the creator: the parent of a fork, the caller of clone for
 * a thread, or the task an io_uring worker serves. */
SEC("tp_btf/task_newtask")
int task_new(unsigned long long *ctx)
{
	struct task_struct *child = (struct task_struct *)ctx[0];
	__u64 clone_flags = ctx[1];
	struct task_struct *parent = bpf_get_current_task_btf();
	/* The loader's new threads must not be signalled by the confined. */
	long parent_tid = aa_loader_number(aa_pid_address(&parent->thread_pid));
	if (parent_tid > 0 && aa_is_loader(parent_tid)) {
		__u32 tid = aa_loader_number(aa_pid_address(&child->thread_pid)), one = 1;
		bpf_map_update_elem(&LOADER_TIDS, &tid, &one, BPF_ANY);
	}
	struct aa_task_mark *parent_mark = aa_mark_of(parent);
	/* A new task also inherits its creator's process leader's mark:
	 * `confine` marks the leader first, so from then on no thread or child
	 * process of the target is created unmarked, even by a thread it has
	 * not reached yet (another process may continue the target while it
	 * is being marked). */
	if (!parent_mark)
		parent_mark = aa_mark_of(parent->group_leader);
	if (!parent_mark)
		return 0;

	struct aa_task_mark mark = { .confined = 1, .flags = parent_mark->flags & AA_MARK_DOOMED };
	struct aa_generation *gen = aa_active_generation();
	__u32 mode = gen ? gen->mode : AA_MODE_ENFORCE;
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(parent);
	long nr = regs ? (long)BPF_CORE_READ(regs, orig_ax) : -1;
	/* A denied creation: the creator is killed, the child is doomed
	 * (killed at its first syscall). */
	__u32 denied = 0;
	/* New namespaces are what unshare makes: judged as unshare. */
	if ((clone_flags & AA_CLONE_NAMESPACES) && gen && !aa_syscall_allowed(gen, AA_NR_UNSHARE))
		denied = AA_REASON_NAMESPACE;
	/* A new process (not a thread) that shares the creator's descriptors,
	 * or its memory without vfork's wait: a task killed for a denied call
	 * leaves what the call made (an fd, memory it wrote) to the other, so
	 * the kill would not take the result with it. */
	if (!(clone_flags & AA_CLONE_THREAD)) {
		if ((clone_flags & AA_CLONE_FILES) ||
		    ((clone_flags & AA_CLONE_VM) && !(clone_flags & AA_CLONE_VFORK)))
			denied = AA_REASON_SHARING;
		else if (clone_flags & AA_CLONE_VM)
			mark.flags |= AA_MARK_VFORKED;
	}
	if (denied) {
		aa_deny_task(parent, parent_mark, mode, nr, 0, denied, (__u32)clone_flags);
		if (mode == AA_MODE_ENFORCE)
			mark.flags |= AA_MARK_DOOMED;
	}
	/* Without syscall tracing a task's syscalls never reach the guard. The
	 * flag is copied from the creator, which is traced while the guard is
	 * attached; this counts what must never happen, and fails closed. */
	if (!(child->thread_info.syscall_work & AA_SYSCALL_WORK_TRACEPOINT) &&
	    !(child->flags & 0x10 /* PF_IO_WORKER: makes no syscalls */)) {
		aa_count(AA_COUNTER_UNTRACED);
		aa_deny(AA_MODE_ENFORCE, -1, 0, AA_REASON_UNTRACED,
			aa_loader_number(aa_pid_address(&child->thread_pid)));
		mark.flags |= AA_MARK_DOOMED;
	}

	if (!bpf_task_storage_get(&TASK_MARK, child, &mark, BPF_LOCAL_STORAGE_GET_F_CREATE))
		aa_count(AA_COUNTER_MARK_FAILED);

	/* The child's stack may have belonged to a task that exited while
	 * cached as unconfined: forget every CPU's entry before it runs. */
	__u32 zero = 0;
	for (__u32 cpu = 0; cpu < AA_MAX_CPUS; cpu++) {
		__u64 *known = bpf_map_lookup_percpu_elem(&GUARD_CACHE, &zero, cpu);
		if (!known)
			break;
		*known = 0;
	}

	if (child->pid == child->tgid) {
		__u32 tgid = aa_loader_number(aa_pid_address(&child->thread_pid));
		struct aa_confined entry = {
			.parent_tgid = aa_loader_number(aa_pid_address(&parent->group_leader->thread_pid)),
		};
		if (bpf_map_update_elem(&CONFINED, &tgid, &entry, BPF_ANY))
			aa_count(AA_COUNTER_REGISTRY_FULL);
	}
	return 0;
}

/* Fires for every exiting thread; `group_dead` is set for the last one. */
SEC("tp_btf/sched_process_exit")
int task_exit(unsigned long long *ctx)
{
	struct task_struct *task = (struct task_struct *)ctx[0];
	int group_dead = (int)ctx[1];
	__u32 tid = aa_loader_number(aa_pid_address(&task->thread_pid));
	if (aa_is_loader(tid))
		bpf_map_delete_elem(&LOADER_TIDS, &tid);
	struct aa_task_mark *mark = aa_mark_of(task);
	if (mark && mark->guarded == 0) {
		/* A thread leaving through exit or exit_group passed sys_enter for
		 * that very call, so a guarded count of 0 means the guard never saw
		 * this confined task: the detector for any hole in the hot path. */
		struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(task);
		long nr = regs ? (long)BPF_CORE_READ(regs, orig_ax) : -1;
		if (nr == AA_NR_EXIT || nr == AA_NR_EXIT_GROUP)
			aa_count(AA_COUNTER_UNGUARDED_EXIT);
	}
	if (!group_dead)
		return 0;

	/* Whichever thread exits last (an io_uring worker, an unmarked thread
	 * of a released process), the process leaves the registry. */
	__u32 tgid = aa_loader_number(aa_pid_address(&task->group_leader->thread_pid));
	if (!aa_process_confined(tgid))
		return 0;
	bpf_map_delete_elem(&CONFINED, &tgid);
	struct aa_generation *gen = aa_active_generation();
	struct aa_event *event = aa_event_start(AA_EVENT_EXIT, gen ? gen->mode : 0);
	if (event) {
		event->tgid = tgid;
		bpf_ringbuf_submit(event, 0);
	}
	return 0;
}

SEC("tp_btf/sched_process_exec")
int task_exec(unsigned long long *ctx)
{
	struct task_struct *task = (struct task_struct *)ctx[0];
	struct linux_binprm *bprm = (struct linux_binprm *)ctx[2];
	struct aa_task_mark *mark = aa_mark_of(task);
	if (!mark) {
		/* A thread not marked yet that execs while its process is being
		 * confined takes over the process's PID and leader role
		 * (de_thread), and the leader's mark goes with the old leader.
		 * The registry entry, written before that mark, says the process
		 * is confined: the new image is marked before it runs, so neither
		 * it nor anything it forks runs free. */
		__u32 tgid = aa_loader_number(aa_pid_address(&task->thread_pid));
		if (!aa_process_confined(tgid))
			return 0;
		struct aa_task_mark fresh = { .confined = 1 };
		mark = bpf_task_storage_get(&TASK_MARK, task, &fresh, BPF_LOCAL_STORAGE_GET_F_CREATE);
		if (!mark) {
			aa_count(AA_COUNTER_MARK_FAILED);
			return 0;
		}
		/* Its registers may be cached as unconfined on any CPU it ran on. */
		__u32 zero = 0;
		for (__u32 cpu = 0; cpu < AA_MAX_CPUS; cpu++) {
			__u64 *known = bpf_map_lookup_percpu_elem(&GUARD_CACHE, &zero, cpu);
			if (!known)
				break;
			*known = 0;
		}
	}
	/* A vfork child's exec gives it memory of its own. */
	mark->flags &= ~AA_MARK_VFORKED;

	struct aa_generation *gen = aa_active_generation();
	struct aa_event *event = aa_event_start(AA_EVENT_EXEC, gen ? gen->mode : 0);
	if (event) {
		bpf_probe_read_kernel_str(event->path, sizeof(event->path), bprm->filename);
		bpf_ringbuf_submit(event, 0);
	}
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
