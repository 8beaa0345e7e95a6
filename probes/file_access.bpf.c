/* File access check at syscall exit: judge what a confined task has just
 * opened, executed or changed in the file system against the path rules of
 * the active generation, by the file the kernel actually opened (never by
 * the name the task passed, which another thread could change).
 *
 * - Opens (open, openat, openat2, creat, open_by_handle_at, and io_uring
 *   opens when they complete): the new descriptor's file is resolved to
 *   its path from the root of the task's mount namespace (dentries and
 *   mounts walked with bpf_loop: relative names, `..`, symlinks and chroot
 *   are already resolved by the kernel; a chroot does not hide the real
 *   path). The access comes from the file's mode (read, write) and the
 *   open flags (O_CREAT, O_TRUNC, O_APPEND are writes). A file reached
 *   through a bind mount of a subdirectory is also judged by its path
 *   through the file system's own mount in that namespace, so binding a
 *   denied directory into an allowed one gains nothing.
 * - execve/execveat: the executable the process now runs is a read.
 * - Calls that change the file system without returning a descriptor
 *   (unlink, rename, mkdir, rmdir, link, symlink, mknod, truncate, chmod
 *   and chown families): their names no longer exist or were never opened,
 *   so the name is joined to the real directory it is relative to (the
 *   cwd, the dirfd, or the root) and `.`/`..` are applied to it as text;
 *   the result is a write (the source of a rename or link also a read:
 *   a new name must not make a file readable that was not). A symlink in
 *   the name is not followed (no path lookup is open to these programs):
 *   the README says what that leaves.
 * - Other processes' memory (/proc/PID/mem, environ, auxv, pagemap of a
 *   process that is not confined too) is refused whatever the rules: with
 *   only openat and pwrite64 a confined task could otherwise overwrite an
 *   unconfined process's code.
 * - A successful unlink or rename of one of the loader's pins, whose name
 *   the guard may not have been able to read at entry.
 *
 * Rules: PATHS (an LPM trie) is searched for every prefix of the path, in
 * the slot of ACTIVE read once per syscall; a deny rule on any prefix wins,
 * and an access with an allowlist needs an allow rule on some prefix.
 * Prefixes match per component (`P\0` is P itself, `P/` what is below).
 *
 * Why sys_exit: the descriptor exists only when the open has returned, and
 * lsm/fentry programs are refused on this kernel family. The kill lands
 * before the task returns to user space, but the call has happened: this
 * is a tripwire (a created or truncated file stays so).
 *
 * Hot path: the syscall guard's GUARD_CACHE (same key, same meaning), so
 * an unconfined task pays one per-CPU load and a compare; a confined task
 * under a generation with no path rule for the access pays no walk.
 */
#include "aa_policy.h"

#define AA_O_CREAT 0100
#define AA_O_TRUNC 01000
#define AA_O_APPEND 02000
#define AA_FMODE_READ 0x1
#define AA_FMODE_WRITE 0x2
#define AA_FMODE_PATH 0x4000 /* O_PATH: neither read nor write */
#define AA_AT_FDCWD -100
#define AA_AT_EMPTY_PATH 0x1000
#define AA_RENAME_EXCHANGE 2
#define AA_MNT_NS_INTERNAL ((__u64)-22) /* ERR_PTR(-EINVAL): the kernel's own mounts */

#define AA_WALK_NAMES 512     /* components a walk remembers: the topmost ones */
#define AA_WALK_DEPTH 8192    /* components a walk follows */
#define AA_WALK_STEPS (AA_WALK_DEPTH + 64) /* plus mount crossings */
#define AA_JOIN_COMPONENTS 2048 /* components a joined path keeps in the buffer */
#define AA_KEPT_BYTES (AA_PATH_BUFFER - AA_NAME_MAX - 2) /* path bytes kept; the rest is hidden */
#define AA_PATH_MASK (AA_PATH_BUFFER - 1)
#define AA_NAME_MAX 255
#define AA_MATCH_STEPS 160 /* a 256-byte key has at most 129 matching prefixes */
#define AA_SAME_FS_MOUNTS 4096 /* mounts of one file system looked through */
#define AA_S_IFMT 0170000
#define AA_S_IFCHR 0020000
#define AA_S_IFBLK 0060000


/* How a walk up from a file ended. Paths are compared by their first 255
 * bytes (a rule holds no more), so a deep path is kept from the root for
 * the first 4 KiB or 512 components, and what lies below is only counted
 * ("hidden"): `..` in a joined name climbs out of the hidden part first. */
#define AA_WALK_RUNNING 0
#define AA_WALK_REACHED 1    /* at the root of the task's mount namespace */
#define AA_WALK_OTHER_TREE 2 /* at the root of another tree (detached, another namespace) */
#define AA_WALK_NOT_A_PATH 3 /* in a kernel-internal mount: a pipe, socket, memfd, anon inode */
#define AA_WALK_FAILED 4     /* too deep, too long, or unreadable */

struct aa_join {
	__u32 name_length;
	__u32 length;     /* of the path so far */
	__u32 components; /* in the path so far */
	__u32 hidden;     /* below what the buffer keeps */
	__u32 component;  /* length of the component being read */
	__u32 failed;
};

/* FILE_SCRATCH[cpu]: one path being resolved (the BPF stack has 512
 * bytes). `prefixlen` and `path` together are an aa_path_key. */
struct aa_file_scratch {
	__u64 names[AA_WALK_NAMES];         /* d_name pointers, a ring: the last are the topmost */
	__u16 starts[AA_JOIN_COMPONENTS];   /* offset of each component's '/' in path */
	__u32 prefixlen;
	char path[AA_PATH_BUFFER + 512];    /* the path so far, no trailing '/'; "" is the root */
	char name[AA_PATH_BUFFER + 512];    /* a non-fd call's name, from user memory */
	/* The join's state lives here, not on the stack: the verifier then
	 * checks join_step once instead of following each count's values. */
	struct aa_join join;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct aa_file_scratch);
} FILE_SCRATCH SEC(".maps");

static __always_inline struct aa_file_scratch *scratch_area(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&FILE_SCRATCH, &zero);
}

/* ---- resolving a (mount, dentry) pair into scratch->path ---- */

struct aa_walk {
	__u64 dentry;
	__u64 mount;   /* struct mount * */
	__u64 ns_root; /* struct mount * at the root of the task's namespace */
	__u32 depth;
	__u32 outcome;
};

static long walk_step(__u64 index, void *ctx)
{
	struct aa_walk *walk = ctx;
	struct aa_file_scratch *scratch = scratch_area();
	if (!scratch) {
		walk->outcome = AA_WALK_FAILED;
		return 1;
	}
	struct dentry *dentry = (struct dentry *)walk->dentry;
	struct mount *mount = (struct mount *)walk->mount;
	struct dentry *mount_root = BPF_CORE_READ(mount, mnt.mnt_root);
	struct dentry *parent = BPF_CORE_READ(dentry, d_parent);
	if (dentry == mount_root || dentry == parent || !parent) {
		struct mount *up = BPF_CORE_READ(mount, mnt_parent);
		if (dentry == mount_root && up && up != mount) {
			walk->dentry = (__u64)BPF_CORE_READ(mount, mnt_mountpoint);
			walk->mount = (__u64)up;
			return 0;
		}
		if (dentry == mount_root && walk->mount == walk->ns_root)
			walk->outcome = AA_WALK_REACHED;
		else if ((__u64)BPF_CORE_READ(mount, mnt_ns) == AA_MNT_NS_INTERNAL)
			walk->outcome = AA_WALK_NOT_A_PATH;
		else
			walk->outcome = AA_WALK_OTHER_TREE;
		return 1;
	}
	if (walk->depth >= AA_WALK_DEPTH) {
		walk->outcome = AA_WALK_FAILED;
		return 1;
	}
	scratch->names[walk->depth & (AA_WALK_NAMES - 1)] = (__u64)BPF_CORE_READ(dentry, d_name.name);
	walk->depth++;
	walk->dentry = (__u64)parent;
	return 0;
}

struct aa_build {
	__u32 depth;
	__u32 length;
	__u32 built; /* components in the buffer */
	__u32 failed;
};

/* Appends component `index` (counted from the root) to the path. */
static long build_step(__u64 index, void *ctx)
{
	struct aa_build *build = ctx;
	struct aa_file_scratch *scratch = scratch_area();
	if (!scratch) {
		build->failed = 1;
		return 1;
	}
	__u32 at = build->length;
	/* The ring holds the topmost AA_WALK_NAMES names; deeper ones are hidden. */
	if (index >= build->depth || index >= AA_WALK_NAMES || at >= AA_KEPT_BYTES)
		return 1;
	scratch->starts[index & (AA_JOIN_COMPONENTS - 1)] = at;
	scratch->path[at & AA_PATH_MASK] = '/';
	__u32 name = (build->depth - 1 - index) & (AA_WALK_NAMES - 1);
	long copied = bpf_probe_read_kernel_str(&scratch->path[(at + 1) & AA_PATH_MASK],
						AA_NAME_MAX + 1, (const void *)scratch->names[name]);
	if (copied <= 1) {
		build->failed = 1;
		return 1;
	}
	build->length = at + copied; /* '/' + name, without the NUL */
	build->built = index + 1;
	return 0;
}

/* A resolved path: scratch->path[0..length) with `components` components,
 * and `hidden` more below what the buffer keeps. */
struct aa_resolved {
	__u32 outcome;
	__u32 length;
	__u32 components;
	__u32 hidden;
};

/* Global functions (here and below) are verified once, not at each call. */
__noinline int aa_resolve(__u64 mount, __u64 dentry, __u64 ns_root, struct aa_resolved *out)
{
	if (!out)
		return 0;
	struct aa_walk walk = { .dentry = dentry, .mount = mount, .ns_root = ns_root };
	out->length = 0;
	out->components = 0;
	out->hidden = 0;
	if (!mount || !dentry) {
		out->outcome = AA_WALK_FAILED;
		return 0;
	}
	bpf_loop(AA_WALK_STEPS, walk_step, &walk, 0);
	out->outcome = walk.outcome == AA_WALK_RUNNING ? AA_WALK_FAILED : walk.outcome;
	if (out->outcome != AA_WALK_REACHED && out->outcome != AA_WALK_OTHER_TREE)
		return 0;
	struct aa_build build = { .depth = walk.depth };
	bpf_loop(AA_WALK_NAMES, build_step, &build, 0);
	if (build.failed) {
		out->outcome = AA_WALK_FAILED;
		return 0;
	}
	out->length = build.length;
	out->components = build.built;
	out->hidden = walk.depth - build.built;
	return 0;
}

/* The struct mount around a vfsmount. */
static __always_inline __u64 mount_of(struct vfsmount *vfsmount)
{
	return vfsmount ? (__u64)vfsmount - bpf_core_field_offset(struct mount, mnt) : 0;
}

static __always_inline __u64 namespace_root(struct task_struct *task)
{
	return (__u64)BPF_CORE_READ(task, nsproxy, mnt_ns, root);
}

/* ---- joining a non-fd call's name to its directory ---- */


/* Reads character `index` of the name; at the end (and at each '/') the
 * component before it is applied: `.` and empty ones are dropped, `..`
 * removes the last component, any other is appended. */
static long join_step(__u64 index, void *ctx)
{
	struct aa_file_scratch *scratch = scratch_area();
	if (!scratch)
		return 1;
	struct aa_join *join = &scratch->join;
	if (index > join->name_length || index >= AA_PATH_BUFFER) {
		if (index <= join->name_length)
			join->failed = 1;
		return 1;
	}
	char c = index < join->name_length ? scratch->name[index & AA_PATH_MASK] : '/';
	if (c != '/') {
		if (++join->component > AA_NAME_MAX) {
			join->failed = 1;
			return 1;
		}
		return 0;
	}
	__u32 n = join->component;
	join->component = 0;
	if (n == 0)
		return 0;
	__u32 start = index - n;
	char first = scratch->name[start & AA_PATH_MASK];
	if (n == 1 && first == '.')
		return 0;
	if (n == 2 && first == '.' && scratch->name[(start + 1) & AA_PATH_MASK] == '.') {
		if (join->hidden > 0) {
			join->hidden--;
		} else if (join->components > 0) {
			join->components--;
			join->length = scratch->starts[join->components & (AA_JOIN_COMPONENTS - 1)];
		}
		return 0;
	}
	__u32 at = join->length;
	if (join->hidden > 0 || at + 1 + n >= AA_KEPT_BYTES ||
	    join->components >= AA_JOIN_COMPONENTS) {
		join->hidden++;
		return 0;
	}
	scratch->starts[join->components & (AA_JOIN_COMPONENTS - 1)] = at;
	join->components++;
	scratch->path[at & AA_PATH_MASK] = '/';
	bpf_probe_read_kernel(&scratch->path[(at + 1) & AA_PATH_MASK], n & AA_NAME_MAX,
			      &scratch->name[start & AA_PATH_MASK]);
	join->length = at + 1 + n;
	return 0;
}

/* ---- names the kernel follows into a descriptor ---- */

#define AA_LINK_NONE -1  /* not a descriptor's name */
#define AA_LINK_OTHER -2 /* another process's descriptor: cannot be judged */

/* Whether the path in scratch continues at `at` with `text`. */
static __always_inline int path_has(struct aa_file_scratch *scratch, __u32 length, __u32 at,
				    const char *text, __u32 text_length)
{
	if (at + text_length > length)
		return 0;
	for (__u32 i = 0; i < text_length && i < 24; i++)
		if (scratch->path[(at + i) & AA_PATH_MASK] != text[i])
			return 0;
	return 1;
}

/* The decimal number at `*at` in the path (advancing `*at`), or -1. */
static __always_inline long path_number(struct aa_file_scratch *scratch, __u32 length, __u32 *at)
{
	long number = -1;
	for (int i = 0; i < 10 && *at < length; i++) {
		char c = scratch->path[*at & AA_PATH_MASK];
		if (c < '0' || c > '9')
			break;
		number = (number < 0 ? 0 : number * 10) + (c - '0');
		(*at)++;
	}
	return number;
}

/* The descriptor a joined name stands for when the kernel follows it
 * there: /proc/self/fd/N, /proc/self/task/TID/fd/N,
 * /proc/thread-self/fd/N, /proc/PID/fd/N and
 * /proc/PID/task/TID/fd/N of the caller's own process, /dev/fd/N and
 * /dev/std{in,out,err} (symlinks into /proc/self/fd). Such names are
 * judged by the descriptor's file, not by their text (tar and Python's
 * lchmod reach a file through one). */
__noinline int aa_descriptor_link(__u32 length)
{
	struct aa_file_scratch *scratch = scratch_area();
	if (!scratch)
		return AA_LINK_NONE;
	struct task_struct *task = bpf_get_current_task_btf();
	__u32 at = 0;
	const char dev_fd[] = "/dev/fd/", self[] = "/proc/self/", self_fd[] = "fd/",
		   self_task[] = "task/", thread[] = "/proc/thread-self/fd/", proc[] = "/proc/",
		   fd[] = "/fd/", tasks[] = "/task/", std[] = "/dev/std";
	if (path_has(scratch, length, 0, std, 8)) {
		const char in[] = "in", out[] = "out", err[] = "err";
		if (length == 10 && path_has(scratch, length, 8, in, 2))
			return 0;
		if (length == 11 && path_has(scratch, length, 8, out, 3))
			return 1;
		if (length == 11 && path_has(scratch, length, 8, err, 3))
			return 2;
		return AA_LINK_NONE;
	}
	int own = 1;
	if (path_has(scratch, length, 0, dev_fd, 8)) {
		at = 8;
	} else if (path_has(scratch, length, 0, self, 11)) {
		at = 11;
		if (path_has(scratch, length, at, self_task, 5)) {
			at += 5;
			if (path_number(scratch, length, &at) < 0 || !path_has(scratch, length, at, fd, 4))
				return AA_LINK_NONE;
			at += 4;
		} else if (path_has(scratch, length, at, self_fd, 3)) {
			at += 3;
		} else {
			return AA_LINK_NONE;
		}
	} else if (path_has(scratch, length, 0, thread, 21)) {
		at = 21;
	} else if (path_has(scratch, length, 0, proc, 6)) {
		at = 6;
		long pid = path_number(scratch, length, &at);
		if (pid < 0)
			return AA_LINK_NONE;
		if (path_has(scratch, length, at, tasks, 6)) {
			at += 6;
			if (path_number(scratch, length, &at) < 0)
				return AA_LINK_NONE;
		}
		if (!path_has(scratch, length, at, fd, 4))
			return AA_LINK_NONE;
		at += 4;
		/* The number in the caller's own PID namespace (as its /proc shows it). */
		struct pid *leader = task->group_leader->thread_pid;
		unsigned int level = BPF_CORE_READ(leader, level);
		__u64 upid = (__u64)leader + bpf_core_field_offset(struct pid, numbers) +
			     (level & 7) * bpf_core_type_size(struct upid);
		own = pid == BPF_CORE_READ((struct upid *)upid, nr);
	} else {
		return AA_LINK_NONE;
	}
	__u32 digits = at;
	long number = path_number(scratch, length, &at);
	if (number < 0 || at != length || at == digits)
		return AA_LINK_NONE;
	return own ? number : AA_LINK_OTHER;
}

/* ---- matching the path against the rules ---- */

struct aa_match {
	__u32 slot;
	__u32 allow;     /* AA_ACCESS_* some allow rule on a prefix grants */
	__u32 deny;      /* AA_ACCESS_* some deny rule on a prefix refuses */
	__u32 deny_key[2]; /* key bits of the longest deny rule, for read and for write */
	__u32 done;
};

static long match_step(__u64 index, void *ctx)
{
	struct aa_match *match = ctx;
	struct aa_file_scratch *scratch = scratch_area();
	if (!scratch)
		return 1;
	struct aa_rule_value *value = bpf_map_lookup_elem(&PATHS, &scratch->prefixlen);
	if (!value) {
		match->done = 1;
		return 1;
	}
	__u32 slot = match->slot & 1;
	if (value->slots & (1 << slot)) {
		__u32 fresh = value->deny[slot] & ~match->deny;
		if (fresh & AA_ACCESS_READ)
			match->deny_key[0] = value->prefixlen;
		if (fresh & AA_ACCESS_WRITE)
			match->deny_key[1] = value->prefixlen;
		match->deny |= value->deny[slot];
		match->allow |= value->allow[slot];
	}
	if (value->prefixlen == 0) {
		match->done = 1;
		return 1;
	}
	scratch->prefixlen = value->prefixlen - 1;
	return 0;
}

/* What one syscall exit is judged by: the active slot, read once. */
struct aa_judge {
	__u32 slot;
	__u32 mode;
	__u32 restricted; /* AA_ACCESS_* with an allowlist */
	__u32 denies;     /* AA_ACCESS_* some deny rule covers */
	__u32 forced;     /* an AA_FILE_* reason that denies whatever the path */
	long nr;
};

/* Whether this generation has any path rule (there is something to step
 * around). */
static __always_inline int has_path_rules(struct aa_judge *judge)
{
	return judge->restricted | judge->denies;
}

/* Whether `need` can be denied at all in this generation. */
static __always_inline int judged(struct aa_judge *judge, __u32 need)
{
	return (need & (judge->restricted | judge->denies)) || (need && judge->forced);
}

/* Judges `need` access to the resolved path in scratch; on a denial,
 * reports it and punishes the task. Returns 1 when denied. */
__noinline int aa_judge_path(struct aa_judge *judge, struct aa_resolved *resolved, __u32 need)
{
	struct aa_file_scratch *scratch = scratch_area();
	if (!scratch || !judge || !resolved || !judged(judge, need))
		return 0;
	__u32 denied = 0, reason = 0, rule_bytes = 0;
	__u32 length = resolved->length;
	if (length == 0) {
		scratch->path[0] = '/';
		length = 1;
	}
	if (length < AA_MAX_PATH) {
		scratch->path[length & AA_PATH_MASK] = 0;
		scratch->prefixlen = 8 * (length + 1);
	} else {
		scratch->prefixlen = 8 * AA_MAX_PATH;
	}
	if (resolved->outcome != AA_WALK_REACHED && resolved->outcome != AA_WALK_OTHER_TREE)
		scratch->path[0] = 0;
	if (judge->forced) {
		denied = need;
		reason = judge->forced;
	} else if (resolved->outcome != AA_WALK_REACHED && resolved->outcome != AA_WALK_OTHER_TREE) {
		denied = need & (judge->restricted | judge->denies);
		reason = AA_FILE_UNRESOLVED;
	} else {
		struct aa_match match = { .slot = judge->slot };
		bpf_loop(AA_MATCH_STEPS, match_step, &match, 0);
		if (!match.done) {
			denied = need & (judge->restricted | judge->denies);
			reason = AA_FILE_UNRESOLVED;
		} else if (need & match.deny) {
			denied = need & match.deny;
			reason = AA_FILE_DENIED;
			rule_bytes = (denied & AA_ACCESS_READ ? match.deny_key[0] : match.deny_key[1]) / 8;
		} else {
			/* A tree outside the task's namespace is under no allow rule. */
			__u32 granted = resolved->outcome == AA_WALK_REACHED ? match.allow : 0;
			denied = need & judge->restricted & ~granted;
			reason = AA_FILE_NOT_ALLOWED;
		}
	}
	if (!denied)
		return 0;
	struct task_struct *task = bpf_get_current_task_btf();
	struct aa_task_mark *mark = aa_mark_of(task);
	struct aa_event *event = aa_event_start(AA_EVENT_FILE, judge->mode);
	if (event) {
		event->syscall_nr = judge->nr;
		event->reason = reason;
		event->detail = denied | (rule_bytes & 0xfff) << 8;
		bpf_probe_read_kernel(event->path, sizeof(event->path), scratch->path);
		bpf_ringbuf_submit(event, 0);
	}
	if (mark)
		aa_punish_task(task, mark, judge->mode);
	return 1;
}

/* ---- what each call is judged on ---- */

/* ---- bind mounts: the file system's own mount ---- */

struct aa_same_fs {
	__u64 next; /* struct mount * */
	__u64 fs_root;
	__u64 ns;
	__u64 found;
};

static long same_fs_step(__u64 index, void *ctx)
{
	struct aa_same_fs *search = ctx;
	struct mount *mount = (struct mount *)search->next;
	if (!mount)
		return 1;
	if ((__u64)BPF_CORE_READ(mount, mnt.mnt_root) == search->fs_root &&
	    (__u64)BPF_CORE_READ(mount, mnt_ns) == search->ns) {
		search->found = (__u64)mount;
		return 1;
	}
	search->next = (__u64)BPF_CORE_READ(mount, mnt_next_for_sb);
	return 0;
}

#define AA_BIND_NONE 0     /* the mount shows its file system's root */
#define AA_BIND_FOUND 1    /* a bind of a subdirectory; *own is the root's mount */
#define AA_BIND_NO_OWN 2   /* a bind whose file system's root is not mounted here */
#define AA_BIND_TOO_MANY 3 /* more mounts of the file system than the probe looks through */

/* For a mount that shows a subdirectory of its file system (a bind mount),
 * the mount of that file system's root in the task's namespace: the
 * namespace's root when it is that, else the first found among the file
 * system's mounts. */
__noinline int aa_own_mount(__u64 vfsmount, __u64 *own)
{
	if (!own)
		return AA_BIND_NONE;
	struct task_struct *task = bpf_get_current_task_btf();
	struct super_block *sb = BPF_CORE_READ((struct vfsmount *)vfsmount, mnt_sb);
	__u64 fs_root = (__u64)BPF_CORE_READ(sb, s_root);
	if (!vfsmount || (__u64)BPF_CORE_READ((struct vfsmount *)vfsmount, mnt_root) == fs_root)
		return AA_BIND_NONE;
	struct mount *ns_root = BPF_CORE_READ(task, nsproxy, mnt_ns, root);
	if ((__u64)BPF_CORE_READ(ns_root, mnt.mnt_sb) == (__u64)sb &&
	    (__u64)BPF_CORE_READ(ns_root, mnt.mnt_root) == fs_root) {
		*own = (__u64)ns_root;
		return AA_BIND_FOUND;
	}
	struct aa_same_fs search = {
		.next = (__u64)BPF_CORE_READ(sb, s_mounts),
		.fs_root = fs_root,
		.ns = (__u64)BPF_CORE_READ(task, nsproxy, mnt_ns),
	};
	bpf_loop(AA_SAME_FS_MOUNTS, same_fs_step, &search, 0);
	if (search.found) {
		*own = search.found;
		return AA_BIND_FOUND;
	}
	return search.next ? AA_BIND_TOO_MANY : AA_BIND_NO_OWN;
}

/* Judges `need` access to the file at (vfsmount, dentry): by its path, and
 * for a file on a bind mount of a subdirectory also by its path through
 * the file system's own mount (when the namespace has one), so binding a
 * denied directory into an allowed one gains nothing. */
__noinline int aa_judge_file_path(struct aa_judge *judge, __u64 vfsmount, __u64 dentry, __u32 need)
{
	if (!judge || !judged(judge, need))
		return 0;
	struct task_struct *task = bpf_get_current_task_btf();
	__u64 ns_root = namespace_root(task);
	struct aa_resolved resolved = {};
	aa_resolve(mount_of((struct vfsmount *)vfsmount), dentry, ns_root, &resolved);
	if (resolved.outcome == AA_WALK_NOT_A_PATH)
		return 0;
	if (aa_judge_path(judge, &resolved, need))
		return 1;
	__u64 own = 0;
	switch (aa_own_mount(vfsmount, &own)) {
	case AA_BIND_FOUND:
		aa_resolve(own, dentry, ns_root, &resolved);
		return aa_judge_path(judge, &resolved, need);
	case AA_BIND_TOO_MANY:
		resolved.outcome = AA_WALK_FAILED;
		return aa_judge_path(judge, &resolved, need);
	}
	return 0;
}

static __always_inline int judge_file(struct aa_judge *judge, struct file *file, __u32 need)
{
	if (!file)
		return 0;
	return aa_judge_file_path(judge, (__u64)BPF_CORE_READ(file, f_path.mnt),
			       (__u64)BPF_CORE_READ(file, f_path.dentry), need);
}

/* Joins the name in scratch (`name_length` bytes) to the directory at
 * (mount, dentry) and judges `need` access to the result. */
__noinline int aa_join_and_judge(struct aa_judge *judge, __u64 mount, __u64 dentry,
				 __u32 name_length, __u32 need)
{
	if (!judge)
		return 0;
	struct task_struct *task = bpf_get_current_task_btf();
	struct aa_resolved resolved = {};
	aa_resolve(mount, dentry, namespace_root(task), &resolved);
	if (resolved.outcome != AA_WALK_REACHED && resolved.outcome != AA_WALK_OTHER_TREE) {
		resolved.outcome = AA_WALK_FAILED;
		return aa_judge_path(judge, &resolved, need);
	}
	struct aa_file_scratch *scratch = scratch_area();
	if (!scratch)
		return 0;
	scratch->join = (struct aa_join){
		.name_length = name_length,
		.length = resolved.length,
		.components = resolved.components,
		.hidden = resolved.hidden,
	};
	bpf_loop(AA_PATH_BUFFER + 1, join_step, 0, 0);
	struct aa_join join = scratch->join;
	if (join.failed)
		resolved.outcome = AA_WALK_FAILED;
	resolved.length = join.length;
	if (!join.failed && !join.hidden) {
		long fd = aa_descriptor_link(join.length);
		if (fd >= 0)
			return judge_file(judge, aa_fd_file(task, fd), need);
		if (fd == AA_LINK_OTHER)
			resolved.outcome = AA_WALK_FAILED;
	}
	return aa_judge_path(judge, &resolved, need);
}

/* Judges `need` access to `name` (user memory), relative to directory
 * descriptor `dirfd` (or the cwd, or the root for an absolute name). With
 * AT_EMPTY_PATH in `flags` and an empty name, the descriptor's own file.
 * A directory on a bind mount of a subdirectory is judged through its file
 * system's own mount too, as files are. */
__noinline int aa_judge_name(struct aa_judge *judge, long dirfd, __u64 name, __u32 flags, __u32 need)
{
	struct aa_file_scratch *scratch = scratch_area();
	if (!scratch || !judge || !judged(judge, need))
		return 0;
	struct task_struct *task = bpf_get_current_task_btf();
	struct aa_resolved unreadable = { .outcome = AA_WALK_FAILED };
	long read = bpf_probe_read_user_str(scratch->name, AA_PATH_BUFFER, (const void *)name);
	if (read <= 0)
		return aa_judge_path(judge, &unreadable, need);
	if (read == 1) {
		if (flags & AA_AT_EMPTY_PATH)
			return judge_file(judge, aa_fd_file(task, dirfd), need);
		/* The call succeeded, so the kernel read a name: this one was
		 * changed after it did. */
		return aa_judge_path(judge, &unreadable, need);
	}
	__u64 base_mnt, base_dentry;
	if (scratch->name[0] == '/') {
		base_mnt = (__u64)BPF_CORE_READ(task, fs, root.mnt);
		base_dentry = (__u64)BPF_CORE_READ(task, fs, root.dentry);
	} else if ((int)dirfd == AA_AT_FDCWD) {
		base_mnt = (__u64)BPF_CORE_READ(task, fs, pwd.mnt);
		base_dentry = (__u64)BPF_CORE_READ(task, fs, pwd.dentry);
	} else {
		struct file *dir = aa_fd_file(task, (int)dirfd);
		if (!dir)
			return aa_judge_path(judge, &unreadable, need);
		base_mnt = (__u64)BPF_CORE_READ(dir, f_path.mnt);
		base_dentry = (__u64)BPF_CORE_READ(dir, f_path.dentry);
	}
	if (aa_join_and_judge(judge, mount_of((struct vfsmount *)base_mnt), base_dentry, read - 1, need))
		return 1;
	__u64 own = 0;
	switch (aa_own_mount(base_mnt, &own)) {
	case AA_BIND_FOUND:
		return aa_join_and_judge(judge, own, base_dentry, read - 1, need);
	case AA_BIND_TOO_MANY:
		return aa_judge_path(judge, &unreadable, need);
	}
	return 0;
}

/* The access an open asked for: the new file's mode, and O_CREAT, O_TRUNC
 * or O_APPEND (from the registers, or openat2's open_how) as a write. */
static __always_inline __u32 open_access(struct file *file, struct pt_regs *regs, long nr)
{
	__u32 mode = BPF_CORE_READ(file, f_mode);
	if (mode & AA_FMODE_PATH)
		return 0;
	__u32 need = 0;
	if (mode & AA_FMODE_READ)
		need |= AA_ACCESS_READ;
	if (mode & AA_FMODE_WRITE)
		need |= AA_ACCESS_WRITE;
	__u64 flags = BPF_CORE_READ(file, f_flags);
	switch (nr) {
	case AA_NR_OPEN:
		flags |= regs->si;
		break;
	case AA_NR_OPENAT:
	case AA_NR_OPEN_BY_HANDLE_AT:
		flags |= regs->dx;
		break;
	case AA_NR_CREAT:
		flags |= AA_O_CREAT | AA_O_TRUNC;
		break;
	case AA_NR_OPENAT2: {
		__u64 how = 0;
		/* Unreadable: judged as the worst it could have been. */
		if (bpf_probe_read_user(&how, sizeof(how), (const void *)regs->dx))
			how = AA_O_CREAT;
		flags |= how;
		break;
	}
	}
	if (flags & (AA_O_CREAT | AA_O_TRUNC | AA_O_APPEND))
		need |= AA_ACCESS_WRITE;
	return need;
}

/* ---- entry points ---- */

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

/* Refuses `file` when it is another (unconfined) process's memory. */
static __always_inline int check_process_memory(struct task_struct *task, struct aa_task_mark *mark,
						 struct file *file, struct aa_judge *judge)
{
	if (BPF_CORE_READ(file, f_inode, i_sb, s_magic) != AA_PROC_SUPER_MAGIC)
		return 0;
	char name[8] = {};
	bpf_probe_read_kernel_str(name, sizeof(name), BPF_CORE_READ(file, f_path.dentry, d_name.name));
	if (!is_memory_file(name))
		return 0;
	struct mm_struct *mm = BPF_CORE_READ(file, private_data);
	if (!mm || mm == task->mm)
		return 0;
	long target = aa_loader_number((__u64)BPF_CORE_READ(mm, owner, group_leader, thread_pid));
	if (target > 0 && aa_process_confined(target))
		return 0;
	aa_deny_task(task, mark, judge->mode, judge->nr, 0, AA_REASON_PROC_MEM, target);
	return 1;
}

static __always_inline int start_judging(struct aa_judge *judge, long nr)
{
	__u32 slot = aa_active_slot();
	struct aa_generation *gen = aa_generation_at(slot);
	judge->slot = slot;
	judge->nr = nr;
	if (!gen) {
		/* No generation: the maps are being created; nothing is allowed. */
		judge->mode = AA_MODE_ENFORCE;
		judge->restricted = AA_ACCESS_READ | AA_ACCESS_WRITE;
		judge->denies = 0;
		return 1;
	}
	judge->mode = gen->mode;
	judge->restricted = (gen->read_restricted ? AA_ACCESS_READ : 0) |
			    (gen->write_restricted ? AA_ACCESS_WRITE : 0);
	judge->denies = gen->path_denies & (AA_ACCESS_READ | AA_ACCESS_WRITE);
	return 1;
}

/* Judges the file behind descriptor `fd`, just opened by `task` through
 * syscall (or io_uring request) `nr` asking for `need`. */
static __always_inline void check_opened_file(struct task_struct *task, struct aa_task_mark *mark,
					      struct aa_judge *judge, long fd, __u32 need_extra,
					      struct pt_regs *regs)
{
	struct file *file = aa_fd_file(task, fd);
	if (!file)
		return;
	if (check_process_memory(task, mark, file, judge))
		return;
	__u32 need = regs ? open_access(file, regs, judge->nr) : 0;
	if (!regs) {
		__u32 mode = BPF_CORE_READ(file, f_mode);
		if (!(mode & AA_FMODE_PATH)) {
			need = (mode & AA_FMODE_READ ? AA_ACCESS_READ : 0) |
			       (mode & AA_FMODE_WRITE ? AA_ACCESS_WRITE : 0) | need_extra;
		}
	}
	/* A block device is every file on it, read around the path rules. */
	if ((BPF_CORE_READ(file, f_inode, i_mode) & AA_S_IFMT) == AA_S_IFBLK && has_path_rules(judge))
		judge->forced = AA_FILE_DEVICE;
	judge_file(judge, file, need);
}

/* A device node made where the rules allow would open a device (a disk:
 * every file on it) by a name the rules allow: under any path rule, a
 * mknod of a character or block device is denied whatever its name. */
static __always_inline void mknod_device(struct aa_judge *judge, __u64 mode)
{
	__u64 type = mode & AA_S_IFMT;
	if (has_path_rules(judge) && (type == AA_S_IFCHR || type == AA_S_IFBLK))
		judge->forced = AA_FILE_DEVICE;
}

/* Calls that change the file system by name. */
static __always_inline void check_names(struct aa_judge *judge, struct pt_regs *regs, long nr)
{
	const __u32 write = AA_ACCESS_WRITE, both = AA_ACCESS_READ | AA_ACCESS_WRITE;
	struct task_struct *task = bpf_get_current_task_btf();
	/* The names come from the table the guard copies them by (NAME_CHECK),
	 * so what is compared and what is judged are the same arguments. */
	__u64 first, second;
	aa_user_args(nr, regs, &first, &second);
	switch (nr) {
	case AA_NR_MKNOD:
		mknod_device(judge, regs->si);
		aa_judge_name(judge, AA_AT_FDCWD, first, 0, write);
		break;
	case AA_NR_MKNODAT:
		mknod_device(judge, regs->dx);
		aa_judge_name(judge, (int)regs->di, first, 0, write);
		break;
	case AA_NR_UNLINK:
	case AA_NR_RMDIR:
	case AA_NR_MKDIR:
	case AA_NR_TRUNCATE:
	case AA_NR_CHMOD:
	case AA_NR_CHOWN:
	case AA_NR_LCHOWN:
	case AA_NR_SYMLINK:
		aa_judge_name(judge, AA_AT_FDCWD, first, 0, write);
		break;
	case AA_NR_UNLINKAT:
	case AA_NR_MKDIRAT:
	case AA_NR_FCHMODAT:
		aa_judge_name(judge, (int)regs->di, first, 0, write);
		break;
	case AA_NR_FCHMODAT2:
		aa_judge_name(judge, (int)regs->di, first, (int)regs->r10, write);
		break;
	case AA_NR_FCHOWNAT:
		aa_judge_name(judge, (int)regs->di, first, (int)regs->r8, write);
		break;
	case AA_NR_SYMLINKAT:
		aa_judge_name(judge, (int)regs->si, first, 0, write);
		break;
	case AA_NR_FCHMOD:
	case AA_NR_FCHOWN:
		judge_file(judge, aa_fd_file(task, (int)regs->di), write);
		break;
	case AA_NR_RENAME:
	case AA_NR_LINK:
		if (!aa_judge_name(judge, AA_AT_FDCWD, first, 0, both))
			aa_judge_name(judge, AA_AT_FDCWD, second, 0, write);
		break;
	case AA_NR_RENAMEAT:
		if (!aa_judge_name(judge, (int)regs->di, first, 0, both))
			aa_judge_name(judge, (int)regs->dx, second, 0, write);
		break;
	case AA_NR_RENAMEAT2:
		if (!aa_judge_name(judge, (int)regs->di, first, 0, both))
			aa_judge_name(judge, (int)regs->dx, second, 0,
				   (int)regs->r8 & AA_RENAME_EXCHANGE ? both : write);
		break;
	case AA_NR_LINKAT:
		if (!aa_judge_name(judge, (int)regs->di, first, (int)regs->r8, both))
			aa_judge_name(judge, (int)regs->dx, second, 0, write);
		break;
	}
}

/* ---- names rewritten while the kernel used them ---- */

struct aa_compare {
	__u32 which;  /* the name being compared: 0 or 1 */
	__u32 length; /* its length with the NUL */
	__u32 differs;
};

/* Compares byte `index` of the name kept at entry with the one read now
 * (in PATH_SCRATCH). */
static long compare_step(__u64 index, void *ctx)
{
	struct aa_compare *compare = ctx;
	__u32 zero = 0;
	char *now = bpf_map_lookup_elem(&PATH_SCRATCH, &zero);
	struct aa_name_check *kept =
		bpf_task_storage_get(&NAME_CHECK, bpf_get_current_task_btf(), 0, 0);
	if (!now || !kept || index >= compare->length) {
		if (index < compare->length)
			compare->differs = 1;
		return 1;
	}
	__u32 at = index & (AA_PATH_BUFFER - 1);
	if (kept->names[compare->which & 1][at] != now[at]) {
		compare->differs = 1;
		return 1;
	}
	return 0;
}

/* Whether the bytes aa_user_args names differ from those the guard kept
 * at entry. A name the guard could not read at entry (a page not yet
 * faulted in) is not compared: it is judged as read now. */
__noinline int aa_user_args_changed(__u64 first, __u64 second, int kind)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct aa_name_check *kept = bpf_task_storage_get(&NAME_CHECK, task, 0, 0);
	__u32 zero = 0;
	char *now = bpf_map_lookup_elem(&PATH_SCRATCH, &zero);
	if (!kept || !now)
		return 0;
	if (kind == AA_ARGS_OPEN_HOW) {
		__u64 flags = 0;
		if (kept->lengths[0] <= 0)
			return 0;
		if (bpf_probe_read_user(&flags, sizeof(flags), (const void *)first))
			return 1;
		return flags != kept->flags;
	}
	for (__u32 which = 0; which < 2; which++) {
		__u64 name = which == 0 ? first : second;
		__s32 length = kept->lengths[which];
		if (!name || length <= 0)
			continue;
		long read = bpf_probe_read_user_str(now, AA_PATH_BUFFER, (const void *)name);
		if (read != length)
			return 1;
		struct aa_compare compare = { .which = which, .length = length };
		bpf_loop(AA_PATH_BUFFER, compare_step, &compare, 0);
		if (compare.differs)
			return 1;
	}
	return 0;
}

struct aa_vma_file {
	__u64 file;
};

static long vma_file(struct task_struct *task, struct vm_area_struct *vma, void *ctx)
{
	((struct aa_vma_file *)ctx)->file = (__u64)BPF_CORE_READ(vma, vm_file);
	return 0;
}

/* After an exec: the executable, and the file the process starts running
 * in, which for a dynamic executable is the ELF interpreter the kernel
 * loaded without any syscall (PT_INTERP: a denied file named there would
 * otherwise run). The start address is the user ip the exec left. */
static __always_inline void check_executed(struct task_struct *task, struct pt_regs *regs,
					   struct aa_judge *judge)
{
	if (judge_file(judge, BPF_CORE_READ(task, mm, exe_file), AA_ACCESS_READ))
		return;
	struct aa_vma_file found = {};
	if (bpf_find_vma(task, regs->ip, vma_file, &found, 0) == 0 && found.file) {
		judge_file(judge, (struct file *)found.file, AA_ACCESS_READ);
	} else {
		struct aa_resolved unknown = { .outcome = AA_WALK_FAILED };
		aa_judge_path(judge, &unknown, AA_ACCESS_READ);
	}
}

static __attribute__((noinline)) int check_exit(struct pt_regs *regs, long ret, __u64 *known)
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
	struct aa_judge judge = {};
	start_judging(&judge, nr);
	/* Bytes read from the task's memory are judged only if they are what
	 * the guard read at entry (see NAME_CHECK). */
	__u64 first, second;
	int kind = aa_user_args(nr, regs, &first, &second);
	if (kind && has_path_rules(&judge)) {
		struct aa_name_check *check = bpf_task_storage_get(&NAME_CHECK, task, 0, 0);
		if (check && check->nr == nr && check->seq == mark->guarded) {
			check->nr = -1;
			if (aa_user_args_changed(first, second, kind))
				judge.forced = AA_FILE_CHANGED;
		}
	}
	if (is_open(nr)) {
		check_opened_file(task, mark, &judge, ret, 0, regs);
		return 0;
	}
	if (ret != 0)
		return 0;
	if (nr == AA_NR_EXECVE || nr == AA_NR_EXECVEAT) {
		check_executed(task, regs, &judge);
		return 0;
	}
	/* The guard read the name at entry; a name in a page not yet faulted in
	 * could not be read then, and can now (the kernel read it). */
	if (aa_touches_pins(nr, regs)) {
		aa_deny_task(task, mark, judge.mode, nr, 0, AA_REASON_PIN, 0);
		return 0;
	}
	check_names(&judge, regs, nr);
	return 0;
}

SEC("tp_btf/sys_exit")
int file_access(unsigned long long *ctx)
{
	__u32 zero = 0;
	__u64 *known = bpf_map_lookup_elem(&GUARD_CACHE, &zero);
	if (!known || *known == ctx[0])
		return 0;
	return check_exit((struct pt_regs *)ctx[0], (long)ctx[1], known);
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
	if (fd < 0)
		return 0;
	struct io_open *open = (struct io_open *)&req->cmd;
	__u64 flags = BPF_CORE_READ(open, how.flags);
	__u32 extra = flags & (AA_O_CREAT | AA_O_TRUNC | AA_O_APPEND) ? AA_ACCESS_WRITE : 0;
	struct aa_judge judge = {};
	start_judging(&judge, opcode == 18 ? AA_NR_OPENAT : AA_NR_OPENAT2);
	check_opened_file(task, mark, &judge, fd, extra, 0);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
