/* Shared by every probe and mirrored by src/loader/abi.rs (layout-tested):
 * constants, event and value layouts, and the maps.
 *
 * Why one header: the three probe objects are loaded separately but share
 * their maps through pins, so every object must declare every map with the
 * same layout. A change here is a change of the pinned ABI: bump
 * AA_ABI_VERSION, which is part of the pin path, so an old pin is never
 * reused with a new layout.
 *
 * Generations: rules live in two slots (0 and 1). GENERATIONS[slot] holds the
 * fixed-size part; LPM entries say per slot whether they exist. A probe reads
 * ACTIVE once and looks only at that slot, so it never sees a mix of two
 * policies. The loader writes the inactive slot, flips ACTIVE, waits an RCU
 * grace period, then brings the old slot in line.
 */
#ifndef AA_POLICY_H
#define AA_POLICY_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "aa_kernel.h"

#define AA_ABI_VERSION 2

#define AA_MODE_ENFORCE 0
#define AA_MODE_AUDIT 1

#define AA_SYSCALL_BITMAP_WORDS 8 /* 512 bits: every native syscall, no x32 */
#define AA_MAX_PATH 256

#define AA_EVENT_SYSCALL 1 /* a confined task made a syscall not allowed */
#define AA_EVENT_CONNECT 2 /* a confined task tried a destination not allowed */
#define AA_EVENT_EXEC 3    /* a confined task exec'd */
#define AA_EVENT_EXIT 4    /* the last thread of a confined process exited */

#define AA_ACCESS_READ 1
#define AA_ACCESS_WRITE 2

/* x86: a syscall entered through the ia32 table; x32 syscalls carry bit 30. */
#define AA_TS_COMPAT 0x0002
#define AA_X32_SYSCALL_BIT 0x40000000

/* GENERATIONS[slot]: the fixed-size rules of one generation, written whole. */
struct aa_generation {
	__u64 generation;          /* monotonically increasing, for status */
	__u32 mode;                /* AA_MODE_* */
	__u32 syscalls_restricted; /* 0: every syscall allowed */
	__u32 egress_restricted;   /* 0: every destination allowed */
	__u32 read_restricted;     /* 0: reads limited by deny rules only */
	__u32 write_restricted;
	__u32 _pad;
	__u64 syscall_allow[AA_SYSCALL_BITMAP_WORDS];
};

/* TASK_MARK value: present means "this task is confined". */
struct aa_task_mark {
	__u32 confined;
	__u32 _pad;
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
	__u16 family; /* AF_INET / AF_INET6 for connect events */
	__u16 port;   /* host order */
	__u8 addr[16];
	char comm[16];
	char path[128]; /* exec: the binary */
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

/* CURRENT_CONFINED[cpu]: 1 while the task on this CPU carries a mark. Kept
 * by task_switch at every context switch, read by the syscall guard with an
 * inlined per-CPU load, so an unconfined task's syscall costs no helper
 * call (a call/return pair costs ~5 ns on CPUs with SRSO safe-RET). Sound
 * because marks are only written on tasks that are not running (stopped, or
 * a fork child before its first run): each marked task is switched in, and
 * so flagged, before its next syscall. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} CURRENT_CONFINED SEC(".maps");

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

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} EVENTS SEC(".maps");

/* COUNTERS[0]: events dropped (ring buffer full); [1]: confined forks the
 * registry could not record (full); [2]: children whose mark could not be
 * allocated. The loader never detaches the hooks while [1] is non-zero. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u64);
} COUNTERS SEC(".maps");

#define AA_COUNTER_EVENT_DROPS 0
#define AA_COUNTER_REGISTRY_FULL 1
#define AA_COUNTER_MARK_FAILED 2

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

static __always_inline __u32 aa_active_slot(void)
{
	__u32 zero = 0;
	__u32 *slot = bpf_map_lookup_elem(&ACTIVE, &zero);
	return slot ? (*slot & 1) : 0;
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
	__u64 id = bpf_get_current_pid_tgid();
	event->kind = kind;
	event->pid = (__u32)id;
	event->tgid = id >> 32;
	event->mode = mode;
	bpf_get_current_comm(event->comm, sizeof(event->comm));
	return event;
}

#endif
