/* io_uring guard: judge each io_uring request of a confined task like the
 * syscall it stands for, and SIGKILL (enforce) or report (audit) the
 * process when that syscall is not allowed.
 *
 * Why: a request runs no syscall of its own. It is executed inline, by an
 * io-wq worker or by the SQPOLL thread (which submits without any syscall
 * at all), so the syscall guard never sees it. io_uring_submit_req fires
 * for every request, in the context of the task that submitted it (the
 * caller of io_uring_enter or the SQPOLL thread, both confined: workers and
 * SQPOLL threads are threads of the process and inherit its mark), before
 * the request runs.
 *
 * A request is allowed only when io_uring_enter is (the policy grants
 * io_uring at all) and so is the syscall it stands for (IO_URING_OPS,
 * filled by the loader); a socket request under an egress allowlist is
 * also judged by its family, as the syscall guard judges socket(). Like
 * the syscall guard this is a tripwire: the kill lands, but the denied
 * request itself may already have run.
 */
#include "aa_policy.h"

SEC("tp_btf/io_uring_submit_req")
int io_uring_guard(unsigned long long *ctx)
{
	struct io_kiocb *req = (struct io_kiocb *)ctx[0];
	struct task_struct *task = bpf_get_current_task_btf();
	struct aa_task_mark *mark = aa_mark_of(task);
	if (!mark)
		return 0;
	struct aa_generation *gen = aa_active_generation();
	if (!gen)
		return 0;

	__u32 opcode = req->opcode;
	__s32 *stands_for = bpf_map_lookup_elem(&IO_URING_OPS, &opcode);
	long nr = stands_for ? *stands_for : -1;
	int allowed = aa_syscall_allowed(gen, AA_NR_IO_URING_ENTER) &&
		      (nr == -2 || (nr >= 0 && aa_syscall_allowed(gen, nr)));
	if (allowed && nr == AA_NR_SOCKET && gen->egress_restricted) {
		struct io_socket *socket = (struct io_socket *)&req->cmd;
		allowed = aa_socket_family_allowed(BPF_CORE_READ(socket, domain),
						   BPF_CORE_READ(socket, type));
	}
	if (!allowed) {
		aa_deny_task(task, mark, gen->mode, nr, 0, AA_REASON_IO_URING_OP, opcode);
		return 0;
	}
	/* A file that goes into a direct descriptor never shows up as an fd,
	 * so what was opened, made or accepted could not be judged (file_access
	 * checks fds); and MSG_RING's SEND_FD hands a direct descriptor to
	 * another ring. */
	__u32 direct = 0;
	if (opcode == 18 /* IORING_OP_OPENAT */ || opcode == 28 /* IORING_OP_OPENAT2 */)
		direct = BPF_CORE_READ((struct io_open *)&req->cmd, file_slot);
	else if (opcode == 45 /* IORING_OP_SOCKET */)
		direct = BPF_CORE_READ((struct io_socket *)&req->cmd, file_slot);
	else if (opcode == 13 /* IORING_OP_ACCEPT */)
		direct = BPF_CORE_READ((struct io_accept *)&req->cmd, file_slot);
	else if (opcode == 40 /* IORING_OP_MSG_RING */)
		direct = BPF_CORE_READ((struct io_msg *)&req->cmd, cmd) == 1 /* SEND_FD */;
	if (direct) {
		aa_deny_task(task, mark, gen->mode, nr, 0, AA_REASON_IO_URING_DIRECT, opcode);
		return 0;
	}
	/* Unlink and rename of the loader's pins, by the kernel's own copy of
	 * the names (taken when the request was prepared). */
	int pins = 0;
	if (opcode == 36 /* IORING_OP_UNLINKAT */) {
		struct io_unlink *unlink = (struct io_unlink *)&req->cmd;
		pins = aa_names_pin((__u64)BPF_CORE_READ(unlink, filename, name), 1);
	} else if (opcode == 35 /* IORING_OP_RENAMEAT */) {
		struct io_rename *rename = (struct io_rename *)&req->cmd;
		pins = aa_names_pin((__u64)BPF_CORE_READ(rename, oldpath, name), 1) ||
		       aa_names_pin((__u64)BPF_CORE_READ(rename, newpath, name), 1);
	}
	if (pins)
		aa_deny_task(task, mark, gen->mode, nr, 0, AA_REASON_PIN, opcode);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
