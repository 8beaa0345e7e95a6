/* The few kernel types the probes read, as CO-RE declarations.
 *
 * Why this exists instead of a 134k-line vmlinux.h: the probes touch five
 * fields. `preserve_access_index` makes clang emit relocations by field
 * name, so libbpf-style loaders (aya) fix the offsets against the running
 * kernel's BTF; the declared layout here never has to match.
 */
#ifndef AA_KERNEL_H
#define AA_KERNEL_H

#include <linux/types.h>

struct thread_info {
	__u32 status; /* TS_COMPAT lives here on x86 */
} __attribute__((preserve_access_index));

struct task_struct {
	struct thread_info thread_info;
	int pid;
	int tgid;
	char comm[16];
	void *bpf_storage; /* NULL until some task-storage map has an entry */
} __attribute__((preserve_access_index));

struct linux_binprm {
	const char *filename;
} __attribute__((preserve_access_index));

struct pt_regs;

#endif
