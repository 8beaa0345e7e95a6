/* File access check at syscall exit: judge the file a confined task has
 * just opened, by what the kernel actually opened (never by the path
 * string, which another thread could change).
 *
 * Today it refuses another process's memory (/proc/PID/mem, environ,
 * auxv, pagemap of a process that is not confined too): with only openat
 * and pwrite64 a confined task could otherwise overwrite an unconfined
 * process's code. The file's private data is the target's mm_struct, whose
 * owner names the target process. It also re-checks a successful unlink or
 * rename for the loader's pins, whose name the guard may not have been
 * able to read at entry (a page not faulted in yet).
 *
 * Why sys_exit: the fd is known only when the open has returned, and lsm
 * programs are refused on this kernel family. The kill lands before the
 * task returns to user space; a sibling thread sharing the fd table could
 * use the new fd for a moment before it dies (a tripwire, as documented).
 *
 * io_uring opens (which run no syscall) are judged when they complete.
 *
 * Hot path: the syscall guard's GUARD_CACHE (same key, same meaning), so
 * an unconfined task pays one per-CPU load and a compare.
 */
#include "aa_policy.h"

static __always_inline int is_open(long nr)
{
	return nr == AA_NR_OPEN || nr == AA_NR_OPENAT || nr == AA_NR_OPENAT2 || nr == AA_NR_CREAT ||
	       nr == AA_NR_OPEN_BY_HANDLE_AT;
}

/* Whether `name` is a /proc/PID file backed by the process's memory. */
static __always_inline int is_memory_file(const char name[8])
{
	return (name[0] == 'm' && name[1] == 'e' && name[2] == 'm' && name[3] == 0) ||
	       (name[0] == 'e' && name[1] == 'n' && name[2] == 'v' && name[3] == 'i' &&
		name[4] == 'r' && name[5] == 'o' && name[6] == 'n' && name[7] == 0) ||
	       (name[0] == 'a' && name[1] == 'u' && name[2] == 'x' && name[3] == 'v' && name[4] == 0) ||
	       (name[0] == 'p' && name[1] == 'a' && name[2] == 'g' && name[3] == 'e' &&
		name[4] == 'm' && name[5] == 'a' && name[6] == 'p' && name[7] == 0);
}

/* Judges the file behind descriptor `fd`, just opened by `task` through
 * syscall (or io_uring request) `nr`. */
static __always_inline void check_file(struct task_struct *task, struct aa_task_mark *mark, long fd,
				       long nr, __u32 io_uring_opcode)
{
	struct file *file = aa_fd_file(task, fd);
	if (!file || BPF_CORE_READ(file, f_inode, i_sb, s_magic) != AA_PROC_SUPER_MAGIC)
		return;
	char name[8] = {};
	bpf_probe_read_kernel_str(name, sizeof(name), BPF_CORE_READ(file, f_path.dentry, d_name.name));
	if (!is_memory_file(name))
		return;
	struct mm_struct *mm = BPF_CORE_READ(file, private_data);
	if (!mm || mm == task->mm)
		return;
	long target = aa_loader_number((__u64)BPF_CORE_READ(mm, owner, group_leader, thread_pid));
	if (target > 0 && aa_process_confined(target))
		return;
	struct aa_generation *gen = aa_active_generation();
	aa_deny_task(task, mark, gen ? gen->mode : AA_MODE_ENFORCE, nr, 0, AA_REASON_PROC_MEM, target);
}

static __attribute__((noinline)) int check_opened(struct pt_regs *regs, long ret, __u64 *known)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct aa_task_mark *mark = aa_mark_of(task);
	if (mark)
		*known = 0;
	else
		*known = (__u64)regs;
	if (!mark || ret < 0)
		return 0;
	long nr = regs->orig_ax;
	if (is_open(nr)) {
		check_file(task, mark, ret, nr, 0);
		return 0;
	}
	/* The guard read the name at entry; a name in a page not yet faulted in
	 * could not be read then, and can now (the kernel read it). */
	if (ret == 0 && aa_touches_pins(nr, regs)) {
		struct aa_generation *gen = aa_active_generation();
		aa_deny_task(task, mark, gen ? gen->mode : AA_MODE_ENFORCE, nr, 0, AA_REASON_PIN, 0);
	}
	return 0;
}

SEC("tp_btf/sys_exit")
int file_access(unsigned long long *ctx)
{
	__u32 zero = 0;
	__u64 *known = bpf_map_lookup_elem(&GUARD_CACHE, &zero);
	if (!known || *known == ctx[0])
		return 0;
	return check_opened((struct pt_regs *)ctx[0], (long)ctx[1], known);
}

/* io_uring opens run no syscall: their result is judged when the request
 * completes (in a thread of the same process: the submitter, an io-wq
 * worker or the SQPOLL thread, which share its descriptors). */
SEC("tp_btf/io_uring_complete")
int file_access_io_uring(unsigned long long *ctx)
{
	struct io_kiocb *req = (struct io_kiocb *)ctx[1];
	struct io_uring_cqe *cqe = (struct io_uring_cqe *)ctx[2];
	__u8 opcode = BPF_CORE_READ(req, opcode);
	if (opcode != 18 /* IORING_OP_OPENAT */ && opcode != 28 /* IORING_OP_OPENAT2 */)
		return 0;
	struct task_struct *task = bpf_get_current_task_btf();
	struct aa_task_mark *mark = aa_mark_of(task);
	if (!mark)
		return 0;
	long fd = BPF_CORE_READ(cqe, res);
	if (fd >= 0)
		check_file(task, mark, fd, opcode == 18 ? AA_NR_OPENAT : AA_NR_OPENAT2, opcode);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
