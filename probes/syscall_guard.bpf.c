/* Syscall guard: SIGKILL (enforce) or report (audit) a confined task's
 * syscall that the active generation does not allow.
 *
 * Why tp_btf/sys_enter: it is the cheapest hook every syscall passes on
 * 6.18 (the plain `tracepoint` type costs ~20 ns more per syscall on every
 * process), and lsm/fentry programs are refused here. The kill lands when
 * the syscall returns, so the denied call itself still runs: this is a
 * tripwire, not prevention.
 *
 * Hot path: an unconfined task pays one inlined per-CPU load and one branch
 * (CURRENT_CONFINED, kept by task_switch); the task-storage mark is still
 * checked behind it. The loader detaches every hook while nothing is
 * confined.
 */
#include "aa_policy.h"

/* The confined path, kept out of the hot function so that its frame stays
 * minimal. */
static __attribute__((noinline)) int guard_confined_task(long id)
{
	struct task_struct *task = bpf_get_current_task_btf();
	if (!bpf_task_storage_get(&TASK_MARK, task, 0, 0))
		return 0;

	__u32 zero = 0;
	__u32 *active = bpf_map_lookup_elem(&ACTIVE, &zero);
	if (!active)
		return 0;
	__u32 slot = *active & 1;
	struct aa_generation *gen = bpf_map_lookup_elem(&GENERATIONS, &slot);
	if (!gen || !gen->syscalls_restricted)
		return 0;

	/* ia32 (int 0x80) and x32 entries use other tables: never allowed. */
	__u32 compat = (task->thread_info.status & AA_TS_COMPAT) || (id & AA_X32_SYSCALL_BIT);
	if (!compat && id >= 0 && id < AA_SYSCALL_BITMAP_WORDS * 64 &&
	    (gen->syscall_allow[id / 64] >> (id % 64)) & 1)
		return 0;

	__u32 mode = gen->mode;
	struct aa_event *event = aa_event_start(AA_EVENT_SYSCALL, mode);
	if (event) {
		event->syscall_nr = id;
		event->compat = compat;
		bpf_ringbuf_submit(event, 0);
	}
	if (mode == AA_MODE_ENFORCE)
		bpf_send_signal(9 /* SIGKILL */);
	return 0;
}

SEC("tp_btf/sys_enter")
int syscall_guard(unsigned long long *ctx)
{
	__u32 zero = 0;
	__u32 *confined = bpf_map_lookup_elem(&CURRENT_CONFINED, &zero);
	if (!confined || !*confined)
		return 0;
	return guard_confined_task((long)ctx[1]);
}

char LICENSE[] SEC("license") = "GPL";
