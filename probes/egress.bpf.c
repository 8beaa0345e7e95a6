/* Egress allowlist: refuse (EPERM) a confined task's connect/sendmsg to a
 * destination the active generation does not allow; everyone else passes.
 *
 * Why cgroup sock_addr hooks at the cgroup v2 root: they are the only hooks
 * on this kernel that can fail the call itself, and the root sees every
 * process. Attached in multi mode, so other tools' programs keep working.
 *
 * Matching: EGRESS4/6 are LPM tries keyed by port then address. A lookup
 * tries the real port, then port 0 (any port). If the longest match does not
 * exist in the active slot, the search continues below its prefix length,
 * so a narrower rule of another generation never hides a wider one.
 */
#include "aa_policy.h"
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10

static __always_inline int egress4_match(__u16 port, __u32 addr, __u32 slot)
{
	struct aa_egress4_key key = { .prefixlen = 48, .port = port };
	__builtin_memcpy(key.addr, &addr, sizeof(addr));
	for (int i = 0; i < 40; i++) {
		struct aa_rule_value *value = bpf_map_lookup_elem(&EGRESS4, &key);
		if (!value)
			return 0;
		if (value->slots & (1 << slot))
			return 1;
		if (value->prefixlen <= 16)
			return 0;
		key.prefixlen = value->prefixlen - 1;
	}
	return 0;
}

static __always_inline int egress6_match(__u16 port, const __u32 addr[4], __u32 slot)
{
	struct aa_egress6_key key = { .prefixlen = 144, .port = port };
	__builtin_memcpy(key.addr, addr, 16);
	for (int i = 0; i < 136; i++) {
		struct aa_rule_value *value = bpf_map_lookup_elem(&EGRESS6, &key);
		if (!value)
			return 0;
		if (value->slots & (1 << slot))
			return 1;
		if (value->prefixlen <= 16)
			return 0;
		key.prefixlen = value->prefixlen - 1;
	}
	return 0;
}

static __always_inline int egress_check(struct bpf_sock_addr *ctx, int family)
{
	struct task_struct *task = bpf_get_current_task_btf();
	if (!task->bpf_storage)
		return 1;
	if (!bpf_task_storage_get(&TASK_MARK, task, 0, 0))
		return 1;
	__u32 zero = 0;
	__u32 *active = bpf_map_lookup_elem(&ACTIVE, &zero);
	if (!active)
		return 1;
	__u32 slot = *active & 1;
	struct aa_generation *gen = bpf_map_lookup_elem(&GENERATIONS, &slot);
	if (!gen || !gen->egress_restricted)
		return 1;

	__u16 port = (__u16)ctx->user_port;
	__u32 addr6[4];
	int allowed;
	if (family == AF_INET) {
		__u32 addr = ctx->user_ip4;
		allowed = egress4_match(port, addr, slot) || egress4_match(0, addr, slot);
		addr6[0] = addr;
	} else {
		addr6[0] = ctx->user_ip6[0];
		addr6[1] = ctx->user_ip6[1];
		addr6[2] = ctx->user_ip6[2];
		addr6[3] = ctx->user_ip6[3];
		/* ::ffff:a.b.c.d reaches an IPv4 destination: judge it as one. */
		if (addr6[0] == 0 && addr6[1] == 0 && addr6[2] == bpf_htonl(0xffff))
			allowed = egress4_match(port, addr6[3], slot) || egress4_match(0, addr6[3], slot);
		else
			allowed = egress6_match(port, addr6, slot) || egress6_match(0, addr6, slot);
	}
	if (allowed)
		return 1;

	__u32 mode = gen->mode;
	struct aa_event *event = aa_event_start(AA_EVENT_CONNECT, mode);
	if (event) {
		event->family = family;
		event->port = bpf_ntohs(port);
		if (family == AF_INET)
			__builtin_memcpy(event->addr, &addr6[0], 4);
		else
			__builtin_memcpy(event->addr, addr6, 16);
		bpf_ringbuf_submit(event, 0);
	}
	return mode == AA_MODE_AUDIT ? 1 : 0;
}

SEC("cgroup/connect4")
int egress_connect4(struct bpf_sock_addr *ctx)
{
	return egress_check(ctx, AF_INET);
}

SEC("cgroup/connect6")
int egress_connect6(struct bpf_sock_addr *ctx)
{
	return egress_check(ctx, AF_INET6);
}

SEC("cgroup/sendmsg4")
int egress_sendmsg4(struct bpf_sock_addr *ctx)
{
	return egress_check(ctx, AF_INET);
}

SEC("cgroup/sendmsg6")
int egress_sendmsg6(struct bpf_sock_addr *ctx)
{
	return egress_check(ctx, AF_INET6);
}

char LICENSE[] SEC("license") = "GPL";
