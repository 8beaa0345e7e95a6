/* Shared by every probe and mirrored by src/loader/abi.rs (layout-tested):
 * constants, event and value layouts, the maps, and the small checks more
 * than one probe makes.
 *
 * Why one header: the probe objects are loaded separately but share their
 * maps through pins, so every object must declare every map with the same
 * layout. A change here is a change of the pinned ABI: bump AA_ABI_VERSION,
 * which is part of the pin path, so an old pin is never reused with a new
 * layout.
 *
 * Generations: rules live in two slots (0 and 1). GENERATIONS[slot] holds the
 * fixed-size part; LPM entries say per slot whether they exist. A probe reads
 * ACTIVE once and looks only at that slot, so it never sees a mix of two
 * policies. The loader writes the inactive slot, flips ACTIVE, waits an RCU
 * grace period, then brings the old slot in line.
 *
 * Syscall numbers below are x86_64's: the probes are built for x86_64 only.
 */
#ifndef AA_POLICY_H
#define AA_POLICY_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "aa_kernel.h"

#define AA_ABI_VERSION 5

#define AA_MODE_ENFORCE 0
#define AA_MODE_AUDIT 1

#define AA_SYSCALL_BITMAP_WORDS 8 /* 512 bits: every native syscall, no x32 */
#define AA_MAX_PATH 256

#define AA_EVENT_SYSCALL 1 /* a confined task made a syscall it may not make */
#define AA_EVENT_CONNECT 2 /* a confined task tried a destination not allowed */
#define AA_EVENT_EXEC 3    /* a confined task exec'd */
#define AA_EVENT_EXIT 4    /* the last thread of a confined process exited */
#define AA_EVENT_NET 5     /* a socket, option or packet the egress allowlist cannot check */
#define AA_EVENT_FILE 6    /* a file access the path rules do not allow; path: the resolved path */

/* aa_event.reason for AA_EVENT_SYSCALL: why the call was denied. */
#define AA_REASON_NOT_ALLOWED 0  /* not in the allowlist */
#define AA_REASON_INTEGRITY 1    /* never allowed to a confined task (bpf) */
#define AA_REASON_SOCKET_FAMILY 2 /* detail: the address family */
#define AA_REASON_NAMESPACE 3    /* clone/clone3 with namespace flags, judged as unshare; detail: flags */
#define AA_REASON_PTRACE_TARGET 4 /* ptrace-class access to a process outside confinement; detail: its pid */
#define AA_REASON_PROC_MEM 5     /* opened another process's memory (/proc/PID/mem...); detail: its pid */
#define AA_REASON_IO_URING_OP 6  /* an io_uring request; detail: the opcode */
#define AA_REASON_UNTRACED 7     /* a confined task created without syscall tracing */
#define AA_REASON_DOOMED 8       /* a task whose creation was denied (see AA_MARK_DOOMED) */
#define AA_REASON_PIN 9          /* unlink or rename of one of the loader's pins */
#define AA_REASON_SHARING 10     /* a new process sharing the creator's fds or memory; detail: clone flags */
#define AA_REASON_LOADER 11      /* a signal to the loader process; detail: the target */
#define AA_REASON_IO_URING_DIRECT 12 /* an io_uring open into a direct descriptor; detail: the opcode */

/* aa_event.reason for AA_EVENT_FILE; detail: the AA_ACCESS_* bits denied,
 * plus (bits 8-19) the length of the rule's key in bytes, for a rule. */
#define AA_FILE_DENIED 1      /* a filesystem.deny rule covers the path */
#define AA_FILE_NOT_ALLOWED 2 /* no prefix of the access's allowlist covers it */
#define AA_FILE_UNRESOLVED 3  /* the path could not be resolved in full: judged denied */
#define AA_FILE_DEVICE 4      /* a block device opened, or a device node made, under path rules */
#define AA_FILE_CHANGED 5     /* its name (or openat2's flags) changed while the kernel used it */

/* aa_event.reason for AA_EVENT_NET. */
#define AA_NET_RAW_SOCKET 1     /* detail: type << 16 | protocol */
#define AA_NET_PING_SOCKET 2
#define AA_NET_PROTOCOL 3
#define AA_NET_ROUTING_OPTION 4 /* setsockopt; detail: level << 16 | optname */
#define AA_NET_ROUTING_PACKET 5 /* an outgoing packet with IPv4 options or an IPv6 routing header */
#define AA_NET_DNS_PACKET 6     /* under host rules, a DNS packet that did not go to the resolver; detail: port */

/* aa_generation.egress_restricted */
#define AA_EGRESS_UNRESTRICTED 0
#define AA_EGRESS_ALLOWLIST 1
#define AA_EGRESS_HOSTS 2 /* allowlist with host names: DNS goes to the daemon's resolver */

#define AA_ACCESS_READ 1
#define AA_ACCESS_WRITE 2

/* x86: a syscall entered through the ia32 table; x32 syscalls carry bit 30. */
#define AA_TS_COMPAT 0x0002
#define AA_X32_SYSCALL_BIT 0x40000000
/* SYSCALL_WORK_BIT_SYSCALL_TRACEPOINT: without it a task's syscalls never
 * reach sys_enter/sys_exit programs. */
#define AA_SYSCALL_WORK_TRACEPOINT (1UL << 1)

#define AA_NR_OPEN 2
#define AA_NR_TRUNCATE 76
#define AA_NR_MKDIR 83
#define AA_NR_RMDIR 84
#define AA_NR_LINK 86
#define AA_NR_SYMLINK 88
#define AA_NR_CHMOD 90
#define AA_NR_FCHMOD 91
#define AA_NR_CHOWN 92
#define AA_NR_FCHOWN 93
#define AA_NR_LCHOWN 94
#define AA_NR_MKNOD 133
#define AA_NR_MKDIRAT 258
#define AA_NR_MKNODAT 259
#define AA_NR_FCHOWNAT 260
#define AA_NR_LINKAT 265
#define AA_NR_SYMLINKAT 266
#define AA_NR_FCHMODAT 268
#define AA_NR_EXECVE 59
#define AA_NR_EXECVEAT 322
#define AA_NR_FCHMODAT2 452
#define AA_NR_IOCTL 16
#define AA_NR_FCNTL 72
#define AA_NR_KILL 62
#define AA_NR_RENAME 82
#define AA_NR_UNLINK 87
#define AA_NR_SOCKET 41
#define AA_NR_SOCKETPAIR 53
#define AA_NR_EXIT 60
#define AA_NR_CREAT 85
#define AA_NR_RT_SIGQUEUEINFO 129
#define AA_NR_PTRACE 101
#define AA_NR_TKILL 200
#define AA_NR_EXIT_GROUP 231
#define AA_NR_TGKILL 234
#define AA_NR_OPENAT 257
#define AA_NR_UNLINKAT 263
#define AA_NR_RENAMEAT 264
#define AA_NR_UNSHARE 272
#define AA_NR_OPEN_BY_HANDLE_AT 304
#define AA_NR_RT_TGSIGQUEUEINFO 297
#define AA_NR_PRLIMIT64 302
#define AA_NR_PROCESS_VM_READV 310
#define AA_NR_RENAMEAT2 316
#define AA_NR_KCMP 312
#define AA_NR_PROCESS_VM_WRITEV 311
#define AA_NR_BPF 321
#define AA_NR_PIDFD_SEND_SIGNAL 424
#define AA_NR_IO_URING_ENTER 426
#define AA_NR_OPENAT2 437
#define AA_NR_PIDFD_GETFD 438
#define AA_NR_PROCESS_MADVISE 440

#define AA_PTRACE_ATTACH 16
#define AA_PTRACE_SEIZE 0x4206

#define AA_CLONE_VM 0x00000100ULL
#define AA_CLONE_FILES 0x00000400ULL
#define AA_CLONE_VFORK 0x00004000ULL
#define AA_CLONE_THREAD 0x00010000ULL

/* CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET, and
 * CLONE_NEWTIME (clone3 only). */
#define AA_CLONE_NAMESPACES (0x00020000ULL | 0x02000000ULL | 0x04000000ULL | 0x08000000ULL | \
			     0x10000000ULL | 0x20000000ULL | 0x40000000ULL | 0x00000080ULL)

/* Every pin's file name starts with this (abi::PIN_PREFIX). */
#define AA_PIN_PREFIX "aa-policyd-"
#define AA_PIN_PREFIX_LEN 11
#define AA_PATH_BUFFER 4096

#define AA_PROC_SUPER_MAGIC 0x9fa0
#define AA_PIDFS_MAGIC 0x50494446

/* GENERATIONS[slot]: the fixed-size rules of one generation, written whole. */
struct aa_generation {
	__u64 generation;          /* monotonically increasing, for status */
	__u32 mode;                /* AA_MODE_* */
	__u32 syscalls_restricted; /* 0: every syscall allowed */
	__u32 egress_restricted;   /* AA_EGRESS_*: 0 = every destination allowed */
	__u32 read_restricted;     /* 0: reads limited by deny rules only */
	__u32 write_restricted;
	__u32 path_denies;         /* AA_ACCESS_* bits that some filesystem.deny rule covers */
	__u64 syscall_allow[AA_SYSCALL_BITMAP_WORDS];
	__u8 policy_sha256[32]; /* the policy text this generation came from (status; 0: unknown) */
};

/* TASK_MARK value: present means "this task is confined". */
#define AA_MARK_DOOMED 1  /* killed at its next syscall: its creation was denied */
#define AA_MARK_VFORKED 2 /* shares its creator's memory until it execs or exits */
struct aa_task_mark {
	__u32 confined;
	__u32 flags;   /* AA_MARK_* */
	__u64 guarded; /* syscalls the guard judged for this task */
};

/* CONFINED value: key is the TGID of a confined process. */
struct aa_confined {
	__u32 parent_tgid; /* the confined process it was forked from, 0 if confined directly */
	__u32 _pad;
};

/* EGRESS4/EGRESS6 key: port (network order, 0 = any port) then address
 * (network order); prefixlen counts the 16 port bits plus the network bits.
 * A lookup tries the real port, then port 0. */
struct aa_egress4_key {
	__u32 prefixlen;
	__u16 port;
	__u8 addr[4];
};

struct aa_egress6_key {
	__u32 prefixlen;
	__u16 port;
	__u8 addr[16];
};

/* EGRESS4/EGRESS6/PATHS value. `slots` bit N: the entry exists in slot N.
 * `prefixlen` repeats the key's, so a probe can continue the longest-prefix
 * search below an entry that does not exist in the active slot. For PATHS,
 * allow[N]/deny[N] are AA_ACCESS_* masks of slot N. */
struct aa_rule_value {
	__u32 prefixlen;
	__u8 slots;
	__u8 allow[2];
	__u8 deny[2];
	__u8 _pad[3];
};

/* PATHS key: a rule on prefix P is stored twice, as "P\0" (P itself) and as
 * "P/" (everything below P), so prefixes match per path component. */
struct aa_path_key {
	__u32 prefixlen; /* bits of path[] that must match */
	char path[AA_MAX_PATH];
};

/* Ring-buffer record, one per event. */
struct aa_event {
	__u32 kind;   /* AA_EVENT_* */
	__u32 pid;    /* thread id */
	__u32 tgid;   /* process id */
	__u32 mode;   /* AA_MODE_* in force */
	__s64 syscall_nr;
	__u32 compat; /* 1: ia32/x32 entry, denied regardless of the bitmap */
	__u16 family; /* AF_INET / AF_INET6 for connect and net events */
	__u16 port;   /* host order */
	__u8 addr[16];
	char comm[16];
	char path[AA_MAX_PATH]; /* exec: the binary; file: the resolved path (first bytes) */
	__u32 reason;   /* AA_REASON_* or AA_NET_* */
	__u32 detail;   /* reason-specific, see AA_REASON_* */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32); /* the slot probes read: 0 or 1 */
} ACTIVE SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct aa_generation);
} GENERATIONS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct aa_task_mark);
} TASK_MARK SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct aa_confined);
} CONFINED SEC(".maps");

/* GUARD_CACHE[cpu]: the pt_regs address of the last task this CPU found
 * unconfined at a syscall; 0 is "nothing known" (a confined task is never
 * cached: it always takes the slow path). A task's pt_regs sit at the top
 * of its own kernel stack, so while it lives no other task has that
 * address: a task whose address is cached unconfined needs no helper call
 * on its next syscall here.
 *
 * Why not a flag kept at sched_switch: measured on 6.18, a task switched in
 * from some contexts (a thread of PID 1 here) runs without any sched_switch
 * event naming it, so such a flag said "unconfined" for 1 in ~47,000 fresh
 * confined tasks. This cache depends on nothing but the guard itself.
 *
 * Kept correct by: a new confined task clears every CPU's entry before it
 * first runs (its stack may have belonged to a dead unconfined task), and
 * the loader clears every CPU's entry after marking running threads
 * (`confine`). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} GUARD_CACHE SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, struct aa_egress4_key);
	__type(value, struct aa_rule_value);
} EGRESS4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, struct aa_egress6_key);
	__type(value, struct aa_rule_value);
} EGRESS6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 131072); /* two keys per path prefix */
	__type(key, struct aa_path_key);
	__type(value, struct aa_rule_value);
} PATHS SEC(".maps");

/* CONFIG[0]: facts about the loader the probes need, written at open.
 *
 * Process numbers: the registry, LOADER_TIDS and the loader's own numbers
 * are numbers in the loader's PID namespace (the daemon may run in a
 * container), which is how the loader itself names processes. */
struct aa_config {
	__u32 pid_ns_inum; /* the loader's PID namespace (inode of /proc/self/ns/pid) */
	__u32 loader_pgid; /* its process group */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct aa_config);
} CONFIG SEC(".maps");

/* LOADER_TIDS: the thread ids (initial PID namespace) of the process that
 * holds the pin dir, so no confined task can signal it; the loader writes
 * its threads at attach, task_newtask adds the threads it creates later,
 * task_exit removes them. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u32);
} LOADER_TIDS SEC(".maps");

/* PENDING: confines and releases in progress, written by the loader before
 * it stops a process and removed when it is done. A loader that finds an
 * entry at open (its predecessor was killed midway) leaves the process
 * unconfined: a confine's client was told it failed, a release's was asked
 * for. The process is continued if it was stopped for it, unmarked on every
 * thread and dropped from the registry. Key: pid (loader's namespace). No
 * probe reads it. */
struct aa_pending {
	__u64 start_time;        /* /proc/PID/stat starttime: the process's identity */
	__u32 stopped_by_loader; /* 1: the loader sent the SIGSTOP */
	__u32 releasing;         /* 1: a release, 0: a confine */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct aa_pending);
} PENDING SEC(".maps");

/* IO_URING_OPS[opcode]: the syscall an io_uring request stands for (filled
 * by the loader); -2: none, judged by io_uring_enter alone; -1 or missing:
 * unknown, never allowed to a confined task. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __s32);
} IO_URING_OPS SEC(".maps");

/* SOCKET_MARK: present on a socket a confined task created, connected or
 * sent on; its packets are checked for source routing. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u32);
} SOCKET_MARK SEC(".maps");

/* LEARNED4/LEARNED6: addresses the daemon's resolver answered for a host
 * name the policy allows, with the port of the host rule (network order,
 * 0 = any port). Valid while `expires_ns` (CLOCK_BOOTTIME) is ahead and the
 * active generation has host rules; the kernel refuses an expired entry by
 * itself, so a stalled or killed daemon cannot keep one alive. */
struct aa_learned4_key {
	__u8 addr[4];
	__u16 port;
	__u16 _pad;
};

struct aa_learned6_key {
	__u8 addr[16];
	__u16 port;
	__u16 _pad;
};

struct aa_learned_value {
	__u64 expires_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, struct aa_learned4_key);
	__type(value, struct aa_learned_value);
} LEARNED4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, struct aa_learned6_key);
	__type(value, struct aa_learned_value);
} LEARNED6 SEC(".maps");

/* RESOLVER[0]: where the daemon's resolver listens (127.0.0.1:port4 and
 * [::1]:port6, network order; 0 = not listening) and the network namespace
 * it listens in. DNS of a confined task in another namespace is not
 * redirected (loopback there is not the daemon's) but refused. */
struct aa_resolver {
	__u16 port4;
	__u16 port6;
	__u32 _pad;
	__u64 netns_cookie;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct aa_resolver);
} RESOLVER SEC(".maps");

/* NAME_CHECK: for a confined task in a call the file probe judges by bytes
 * it reads from the task's memory (names, openat2's flags), those bytes as
 * the syscall guard read them at entry. The file probe reads them again at
 * exit: another thread may have changed them after the kernel read them,
 * and any difference means the call is judged denied. The bytes are kept
 * whole (a hash of attacker-chosen names can be made to collide). `seq` is
 * the task mark's `guarded` count at entry, so an entry is only ever
 * compared at the exit of the call that wrote it. */
struct aa_name_check {
	__u64 seq;
	__s64 nr;
	__u64 flags;      /* openat2: open_how.flags */
	__s32 lengths[2]; /* of each name with its NUL; <= 0: unreadable at entry */
	char names[2][AA_PATH_BUFFER];
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct aa_name_check);
} NAME_CHECK SEC(".maps");

/* PATH_SCRATCH[cpu]: room for one path read from memory (the BPF stack
 * has 512 bytes). Private to each object: not pinned. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, char[AA_PATH_BUFFER]);
} PATH_SCRATCH SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} EVENTS SEC(".maps");

/* COUNTERS: failures of the mechanism itself, each of which must stay 0
 * except the first. The loader never detaches the hooks while [1] or [2]
 * is non-zero. */
#define AA_COUNTER_EVENT_DROPS 0     /* events lost (ring buffer full) */
#define AA_COUNTER_REGISTRY_FULL 1   /* confined forks the registry could not record */
#define AA_COUNTER_MARK_FAILED 2     /* children whose mark could not be allocated */
#define AA_COUNTER_UNTRACED 3        /* confined tasks created without syscall tracing */
#define AA_COUNTER_UNGUARDED_EXIT 4  /* confined tasks that called exit with no syscall judged */
#define AA_COUNTERS 5

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, AA_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} COUNTERS SEC(".maps");

static __always_inline void aa_count(__u32 index)
{
	__u64 *counter = bpf_map_lookup_elem(&COUNTERS, &index);
	if (counter)
		__sync_fetch_and_add(counter, 1);
}

static __always_inline struct aa_generation *aa_active_generation(void)
{
	__u32 zero = 0;
	__u32 *slot = bpf_map_lookup_elem(&ACTIVE, &zero);
	if (!slot)
		return 0;
	__u32 index = *slot & 1;
	return bpf_map_lookup_elem(&GENERATIONS, &index);
}

/* GENERATIONS[slot]: read with the slot the caller read ACTIVE for. */
static __always_inline struct aa_generation *aa_generation_at(__u32 slot)
{
	__u32 index = slot & 1;
	return bpf_map_lookup_elem(&GENERATIONS, &index);
}

static __always_inline __u32 aa_active_slot(void)
{
	__u32 zero = 0;
	__u32 *slot = bpf_map_lookup_elem(&ACTIVE, &zero);
	return slot ? (*slot & 1) : 0;
}

/* The mark of `task`, or NULL when it is not confined. */
static __always_inline struct aa_task_mark *aa_mark_of(struct task_struct *task)
{
	if (!task->bpf_storage)
		return 0;
	return bpf_task_storage_get(&TASK_MARK, task, 0, 0);
}

static __always_inline int aa_syscall_allowed(struct aa_generation *gen, long nr)
{
	if (!gen->syscalls_restricted)
		return 1;
	if (nr < 0 || nr >= AA_SYSCALL_BITMAP_WORDS * 64)
		return 0;
	__u64 bit = nr;
	return (gen->syscall_allow[bit / 64] >> (bit % 64)) & 1;
}

#define AA_MAX_PID_NS_DEPTH 8

/* The number of the struct pid at `pid` in the loader's PID namespace, or
 * -1 when it has none there (or is nested deeper than the probes look). */
static __always_inline long aa_loader_number(__u64 pid)
{
	__u32 zero = 0;
	struct aa_config *config = bpf_map_lookup_elem(&CONFIG, &zero);
	if (!config || !pid)
		return -1;
	unsigned int level = BPF_CORE_READ((struct pid *)pid, level);
	__u64 numbers = pid + bpf_core_field_offset(struct pid, numbers);
	__u64 stride = bpf_core_type_size(struct upid);
	for (__u32 i = 0; i < AA_MAX_PID_NS_DEPTH && i <= level; i++) {
		struct upid *upid = (struct upid *)(numbers + i * stride);
		if (BPF_CORE_READ(upid, ns, ns.inum) == config->pid_ns_inum)
			return BPF_CORE_READ(upid, nr);
	}
	return -1;
}

/* The address of a struct pid pointer's target, as a plain number (so it
 * can be indexed). */
static __always_inline __u64 aa_pid_address(struct pid **field)
{
	__u64 address = 0;
	bpf_probe_read_kernel(&address, sizeof(address), field);
	return address;
}

/* Whether the caller names processes by numbers of the loader's PID
 * namespace (so they can be compared with the registry and LOADER_TIDS). */
static __always_inline int aa_numbers_comparable(struct task_struct *task)
{
	__u32 zero = 0;
	struct aa_config *config = bpf_map_lookup_elem(&CONFIG, &zero);
	unsigned int level = task->thread_pid->level;
	__u64 pid = aa_pid_address(&task->thread_pid);
	if (!config || level >= AA_MAX_PID_NS_DEPTH)
		return 0;
	__u64 upid = pid + bpf_core_field_offset(struct pid, numbers) +
		     level * bpf_core_type_size(struct upid);
	return BPF_CORE_READ((struct upid *)upid, ns, ns.inum) == config->pid_ns_inum;
}

/* Whether process number `tgid` (loader's namespace) is in the registry of
 * confined processes. */
static __always_inline int aa_process_confined(__u32 tgid)
{
	return bpf_map_lookup_elem(&CONFINED, &tgid) != 0;
}

static __always_inline int aa_is_loader(__u32 tid)
{
	return bpf_map_lookup_elem(&LOADER_TIDS, &tid) != 0;
}

/* The socket families a task confined by an egress allowlist may create:
 * the ones whose destinations the cgroup hooks see (inet) or that stay on
 * this machine (unix, netlink). Everything else (packet, vsock, ...) could
 * reach a destination the allowlist never judges. */
static __always_inline int aa_socket_family_allowed(int family, int type)
{
	/* socket(AF_INET, SOCK_PACKET) is turned into a packet socket. */
	if (family == 2 && (type & 0xf) == 10 /* SOCK_PACKET */)
		return 0;
	return family == 1 /* AF_UNIX */ || family == 2 /* AF_INET */ ||
	       family == 10 /* AF_INET6 */ || family == 16 /* AF_NETLINK */;
}

/* Reserves and pre-fills an event for the current task, or counts a drop. */
static __always_inline struct aa_event *aa_event_start(__u32 kind, __u32 mode)
{
	struct aa_event *event = bpf_ringbuf_reserve(&EVENTS, sizeof(*event), 0);
	if (!event) {
		aa_count(AA_COUNTER_EVENT_DROPS);
		return 0;
	}
	__builtin_memset(event, 0, sizeof(*event));
	struct task_struct *task = bpf_get_current_task_btf();
	long pid = aa_loader_number(aa_pid_address(&task->thread_pid));
	long tgid = aa_loader_number(aa_pid_address(&task->group_leader->thread_pid));
	__u64 id = bpf_get_current_pid_tgid();
	event->kind = kind;
	event->pid = pid > 0 ? pid : (__u32)id;
	event->tgid = tgid > 0 ? tgid : id >> 32;
	event->mode = mode;
	bpf_get_current_comm(event->comm, sizeof(event->comm));
	return event;
}

/* Reports a denied syscall-level action of the current task. */
static __always_inline void aa_report(__u32 mode, long nr, __u32 compat, __u32 reason, __u32 detail)
{
	struct aa_event *event = aa_event_start(AA_EVENT_SYSCALL, mode);
	if (event) {
		event->syscall_nr = nr;
		event->compat = compat;
		event->reason = reason;
		event->detail = detail;
		bpf_ringbuf_submit(event, 0);
	}
}

/* Reports a denied syscall-level action of the current task and, in
 * enforce mode, kills its process (the kill lands when the current syscall
 * returns). */
static __always_inline void aa_deny(__u32 mode, long nr, __u32 compat, __u32 reason, __u32 detail)
{
	aa_report(mode, nr, compat, reason, detail);
	if (mode == AA_MODE_ENFORCE)
		bpf_send_signal(9 /* SIGKILL */);
}

/* In enforce mode, kills the current task's process (see aa_deny). A task
 * created by vfork shares its creator's memory until it execs: whatever a
 * denied call wrote there outlives the task, so the creator is doomed too
 * (killed at its next syscall). */
static __always_inline void aa_punish_task(struct task_struct *task, struct aa_task_mark *mark,
					   __u32 mode)
{
	if (mode != AA_MODE_ENFORCE)
		return;
	bpf_send_signal(9 /* SIGKILL */);
	if (!(mark->flags & AA_MARK_VFORKED))
		return;
	struct aa_task_mark *creator = bpf_task_storage_get(&TASK_MARK, task->real_parent, 0, 0);
	if (creator)
		creator->flags |= AA_MARK_DOOMED;
}

/* Reports a denial by `task` and punishes it (aa_punish_task). */
static __always_inline void aa_deny_task(struct task_struct *task, struct aa_task_mark *mark,
					 __u32 mode, long nr, __u32 compat, __u32 reason,
					 __u32 detail)
{
	aa_report(mode, nr, compat, reason, detail);
	aa_punish_task(task, mark, mode);
}

/* The file behind descriptor `fd` of the current task, or NULL. */
static __always_inline struct file *aa_fd_file(struct task_struct *task, long fd)
{
	struct fdtable *fdt = task->files->fdt;
	if (fd < 0 || fd >= fdt->max_fds)
		return 0;
	struct file **fds = fdt->fd;
	struct file *file = 0;
	bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]);
	return file;
}

/* Whether the last component of the path at `path` (user memory, or
 * kernel memory when `kernel`) names one of the loader's pins. Unlink and
 * rename act on the last component literally (they do not follow it), and
 * no other file is named like a pin, so this tells an attempt on the pins
 * without resolving the path. A global function, so the verifier checks it
 * once rather than at every call. */
#define AA_PIN_NAME_MAX 64 /* no pin's name is longer */
#define AA_TRAILING_SLASHES_MAX 64

__attribute__((noinline)) int aa_names_pin(__u64 path, int kernel)
{
	__u32 zero = 0;
	char *buffer = bpf_map_lookup_elem(&PATH_SCRATCH, &zero);
	if (!buffer || !path)
		return 0;
	long length = kernel ? bpf_probe_read_kernel_str(buffer, AA_PATH_BUFFER, (const void *)path)
			     : bpf_probe_read_user_str(buffer, AA_PATH_BUFFER, (const void *)path);
	if (length <= 1)
		return 0;
	long end = length - 1; /* the NUL */
	int i;
	for (i = 0; i < AA_TRAILING_SLASHES_MAX && end > 0; i++) {
		if (buffer[(end - 1) & (AA_PATH_BUFFER - 1)] != '/')
			break;
		end--;
	}
	if (i == AA_TRAILING_SLASHES_MAX)
		return 1; /* absurd input: refuse rather than guess */
	long start = end;
	for (i = 0; i <= AA_PIN_NAME_MAX && start > 0; i++) {
		if (buffer[(start - 1) & (AA_PATH_BUFFER - 1)] == '/')
			break;
		start--;
	}
	if (end - start > AA_PIN_NAME_MAX || end - start < AA_PIN_PREFIX_LEN)
		return 0;
	const char prefix[] = AA_PIN_PREFIX;
	for (i = 0; i < AA_PIN_PREFIX_LEN; i++)
		if (buffer[(start + i) & (AA_PATH_BUFFER - 1)] != prefix[i])
			return 0;
	return 1;
}

/* The arguments of syscall `nr` in the task's memory that the file probe
 * judges by their bytes: 1 with up to two names (`first`, `second`), 2 for
 * openat2's open_how (its flags), 0 for none. */
#define AA_ARGS_NAMES 1
#define AA_ARGS_OPEN_HOW 2
static __always_inline int aa_user_args(long nr, struct pt_regs *regs, __u64 *first, __u64 *second)
{
	*first = 0;
	*second = 0;
	switch (nr) {
	case AA_NR_UNLINK:
	case AA_NR_RMDIR:
	case AA_NR_MKDIR:
	case AA_NR_MKNOD:
	case AA_NR_TRUNCATE:
	case AA_NR_CHMOD:
	case AA_NR_CHOWN:
	case AA_NR_LCHOWN:
		*first = regs->di;
		return AA_ARGS_NAMES;
	case AA_NR_UNLINKAT:
	case AA_NR_MKDIRAT:
	case AA_NR_MKNODAT:
	case AA_NR_FCHMODAT:
	case AA_NR_FCHMODAT2:
	case AA_NR_FCHOWNAT:
	case AA_NR_SYMLINK:
		*first = regs->si;
		return AA_ARGS_NAMES;
	case AA_NR_SYMLINKAT:
		*first = regs->dx;
		return AA_ARGS_NAMES;
	case AA_NR_RENAME:
	case AA_NR_LINK:
		*first = regs->di;
		*second = regs->si;
		return AA_ARGS_NAMES;
	case AA_NR_RENAMEAT:
	case AA_NR_RENAMEAT2:
	case AA_NR_LINKAT:
		*first = regs->si;
		*second = regs->r10;
		return AA_ARGS_NAMES;
	case AA_NR_OPENAT2:
		*first = regs->dx;
		return AA_ARGS_OPEN_HOW;
	}
	return 0;
}

/* Copies the bytes aa_user_args names into `check` (the guard, at entry). */
static __always_inline void aa_keep_user_args(struct aa_name_check *check, __u64 first, __u64 second,
					      int kind)
{
	check->lengths[0] = 0;
	check->lengths[1] = 0;
	if (kind == AA_ARGS_OPEN_HOW) {
		if (bpf_probe_read_user(&check->flags, sizeof(check->flags), (const void *)first))
			check->lengths[0] = -1;
		else
			check->lengths[0] = sizeof(check->flags);
		return;
	}
	if (first)
		check->lengths[0] = bpf_probe_read_user_str(check->names[0], AA_PATH_BUFFER, (const void *)first);
	if (second)
		check->lengths[1] = bpf_probe_read_user_str(check->names[1], AA_PATH_BUFFER, (const void *)second);
}

/* Whether a generation has any path rule. */
static __always_inline int aa_has_path_rules(struct aa_generation *gen)
{
	return gen->read_restricted || gen->write_restricted || gen->path_denies;
}

/* Whether an unlink or rename (syscall `nr` with arguments `regs`) names
 * one of the loader's pins. */
static __always_inline int aa_touches_pins(long nr, struct pt_regs *regs)
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

#endif
