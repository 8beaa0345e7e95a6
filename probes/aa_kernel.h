/* The few kernel types the probes read, as CO-RE declarations.
 *
 * Why this exists instead of a 134k-line vmlinux.h: the probes touch a few
 * dozen fields. `preserve_access_index` makes clang emit relocations by
 * field name, so libbpf-style loaders (aya) fix the offsets against the
 * running kernel's BTF; the declared layout here never has to match.
 */
#ifndef AA_KERNEL_H
#define AA_KERNEL_H

#include <linux/types.h>

#define AA_CORE __attribute__((preserve_access_index))

struct thread_info {
	unsigned long syscall_work; /* SYSCALL_WORK_* bits (generic entry) */
	__u32 status;               /* TS_COMPAT lives here on x86 */
} AA_CORE;

struct pt_regs {
	unsigned long di;
	unsigned long si;
	unsigned long dx;
	unsigned long r10;
	unsigned long r8;
	unsigned long orig_ax;
	unsigned long ip;
} AA_CORE;

struct ns_common {
	unsigned int inum;
} AA_CORE;

struct pid_namespace {
	struct ns_common ns;
} AA_CORE;

struct upid {
	int nr;
	struct pid_namespace *ns;
} AA_CORE;

/* numbers[i] is the number in the namespace at nesting level i (0: the
 * initial one), up to `level`. */
struct pid {
	unsigned int level;
	struct upid numbers[1];
} AA_CORE;

struct mount;

/* s_mounts: every mount of this file system, linked by mnt_next_for_sb. */
struct super_block {
	unsigned long s_magic;
	struct dentry *s_root;
	struct mount *s_mounts;
} AA_CORE;

struct inode {
	unsigned short i_mode; /* S_IFMT bits: the file type */
	struct super_block *i_sb;
	void *i_private;
} AA_CORE;

struct qstr {
	const unsigned char *name;
} AA_CORE;

struct dentry {
	struct qstr d_name;
	struct dentry *d_parent; /* itself at a file system's root */
} AA_CORE;

struct vfsmount {
	struct dentry *mnt_root; /* the dentry this mount shows at its mount point */
	struct super_block *mnt_sb;
} AA_CORE;

struct mnt_namespace;

/* The kernel's private wrapper of a vfsmount (fs/mount.h). */
struct mount {
	struct mount *mnt_parent; /* itself for the root of a tree */
	struct dentry *mnt_mountpoint;
	struct vfsmount mnt;
	struct mount *mnt_next_for_sb;
	struct mnt_namespace *mnt_ns; /* MNT_NS_INTERNAL for the kernel's own mounts */
} AA_CORE;

struct mnt_namespace {
	struct mount *root;
} AA_CORE;

struct path {
	struct vfsmount *mnt;
	struct dentry *dentry;
} AA_CORE;

struct fs_struct {
	struct path root; /* chroot */
	struct path pwd;
} AA_CORE;

struct nsproxy {
	struct mnt_namespace *mnt_ns;
} AA_CORE;

struct file {
	struct path f_path;
	struct inode *f_inode;
	void *private_data;
	unsigned int f_flags;
	unsigned int f_mode; /* FMODE_READ 1, FMODE_WRITE 2 */
} AA_CORE;

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
} AA_CORE;

struct files_struct {
	struct fdtable *fdt;
} AA_CORE;

struct task_struct;

/* pids[2] is PIDTYPE_PGID: the process group. */
struct signal_struct {
	struct pid *pids[4];
} AA_CORE;

struct mm_struct {
	struct task_struct *owner; /* CONFIG_MEMCG: the thread-group leader using it */
	struct file *exe_file;     /* the executable it runs */
} AA_CORE;

struct vm_area_struct {
	struct file *vm_file;
} AA_CORE;

struct hlist_node {
	struct hlist_node *next;
} AA_CORE;

struct task_struct {
	struct thread_info thread_info;
	unsigned int flags; /* PF_* */
	int pid;
	int tgid;
	char comm[16];
	struct mm_struct *mm;
	struct files_struct *files;
	struct fs_struct *fs;
	struct nsproxy *nsproxy;
	struct pid *thread_pid;
	struct task_struct *real_parent;
	struct task_struct *group_leader;
	struct signal_struct *signal;
	void *bpf_storage; /* NULL until some task-storage map has an entry */
} AA_CORE;

struct linux_binprm {
	const char *filename;
} AA_CORE;

/* io_uring: the request being submitted. `cmd` overlays the per-opcode
 * data; for IORING_OP_SOCKET it is a struct io_socket. */
struct io_cmd_data {
	__u64 data[8];
} AA_CORE;

struct io_kiocb {
	struct io_cmd_data cmd;
	__u8 opcode;
} AA_CORE;

struct io_uring_cqe {
	__s32 res;
} AA_CORE;

struct filename {
	const char *name;
} AA_CORE;

struct io_unlink {
	struct filename *filename;
} AA_CORE;

struct io_rename {
	struct filename *oldpath;
	struct filename *newpath;
} AA_CORE;

struct open_how {
	__u64 flags;
} AA_CORE;

struct io_open {
	int dfd;
	__u32 file_slot; /* non-zero: a direct descriptor, not an fd */
	struct open_how how;
} AA_CORE;

struct io_socket {
	struct file *file;
	int domain;
	int type;
	int protocol;
	__u32 file_slot;
} AA_CORE;

struct io_accept {
	__u32 file_slot;
} AA_CORE;

struct io_msg {
	__u32 cmd; /* IORING_MSG_DATA 0, IORING_MSG_SEND_FD 1 */
} AA_CORE;

#endif
