/* Confinement identity and process tracking: a confined task's children and
 * threads are confined; the registry of confined processes follows forks and
 * exits; execs of confined processes are reported.
 *
 * Why task storage and not a PID-keyed map: confinement belongs to the task.
 * A reused PID is a new task with no storage, so it can never inherit a mark,
 * even if a mark was written late or an exit was missed. The CONFINED hash
 * exists only because task storage cannot be enumerated from userspace; it is
 * kept here, off the syscall hot path, for status, the guard and restarts.
 */
#include "aa_policy.h"

/* Fires for new processes and new threads alike (pthreads, vfork,
 * posix_spawn, fork from a non-leader thread). `current` is the parent. */
SEC("tp_btf/sched_process_fork")
int task_fork(unsigned long long *ctx)
{
	struct task_struct *parent = (struct task_struct *)ctx[0];
	struct task_struct *child = (struct task_struct *)ctx[1];
	if (!parent->bpf_storage)
		return 0;
	if (!bpf_task_storage_get(&TASK_MARK, parent, 0, 0))
		return 0;

	struct aa_task_mark mark = { .confined = 1 };
	if (!bpf_task_storage_get(&TASK_MARK, child, &mark, BPF_LOCAL_STORAGE_GET_F_CREATE))
		aa_count(AA_COUNTER_MARK_FAILED);

	if (child->pid == child->tgid) {
		__u32 tgid = child->tgid;
		struct aa_confined entry = { .parent_tgid = parent->tgid };
		if (bpf_map_update_elem(&CONFINED, &tgid, &entry, BPF_ANY))
			aa_count(AA_COUNTER_REGISTRY_FULL);
	}
	return 0;
}

/* Keeps CURRENT_CONFINED for the task being switched in; see aa_policy.h.
 * `next` is a BTF pointer, so the unconfined path needs no helper call. */
SEC("tp_btf/sched_switch")
int task_switch(unsigned long long *ctx)
{
	struct task_struct *next = (struct task_struct *)ctx[2];
	__u32 zero = 0;
	__u32 *confined = bpf_map_lookup_elem(&CURRENT_CONFINED, &zero);
	if (!confined)
		return 0;
	*confined = next->bpf_storage && bpf_task_storage_get(&TASK_MARK, next, 0, 0);
	return 0;
}

/* Fires for every exiting thread; `group_dead` is set for the last one. */
SEC("tp_btf/sched_process_exit")
int task_exit(unsigned long long *ctx)
{
	struct task_struct *task = (struct task_struct *)ctx[0];
	int group_dead = (int)ctx[1];
	if (!group_dead || !task->bpf_storage)
		return 0;
	if (!bpf_task_storage_get(&TASK_MARK, task, 0, 0))
		return 0;

	__u32 tgid = task->tgid;
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
	if (!task->bpf_storage)
		return 0;
	if (!bpf_task_storage_get(&TASK_MARK, task, 0, 0))
		return 0;

	struct aa_generation *gen = aa_active_generation();
	struct aa_event *event = aa_event_start(AA_EVENT_EXEC, gen ? gen->mode : 0);
	if (event) {
		bpf_probe_read_kernel_str(event->path, sizeof(event->path), bprm->filename);
		bpf_ringbuf_submit(event, 0);
	}
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
