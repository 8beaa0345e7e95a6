/* Egress allowlist: refuse (EPERM) a confined task's connect/sendmsg to a
 * destination the active generation does not allow; everyone else passes.
 * Under an allowlist, also refuse what the allowlist cannot judge: raw and
 * ICMP (ping) sockets and transport protocols other than TCP, UDP and
 * UDP-Lite (socket creation; MPTCP too: the kernel opens its further
 * subflows itself, from a worker no hook counts as confined, to whatever
 * address the peer announces), IPv4 options and IPv6 routing
 * headers set with setsockopt, and outgoing packets of a confined task's
 * socket that carry either (set through ancillary data).
 *
 * Why cgroup hooks at the cgroup v2 root: they are the only hooks on this
 * kernel that can fail the call itself, and the root sees every process.
 * Attached in multi mode, so other tools' programs keep working. Packet
 * and socket families outside inet (packet, vsock, ...) are not seen by
 * these hooks; the syscall guard refuses creating them.
 *
 * Matching: EGRESS4/6 are LPM tries keyed by port then address. A lookup
 * tries the real port, then port 0 (any port). If the longest match does not
 * exist in the active slot, the search continues below its prefix length,
 * so a narrower rule of another generation never hides a wider one.
 *
 * Host names (a generation with AA_EGRESS_HOSTS): a confined task's DNS
 * (destination port 53, UDP or TCP, v4, v6 or v4-mapped) is sent to the
 * daemon's resolver on loopback instead, which answers only names the
 * policy allows and writes each answered address into LEARNED4/6 before it
 * replies; those addresses then pass like rules until they expire. The
 * original server is kept with the socket (DNS_ORIGIN) and put back as the
 * source of the answers (recvmsg) and as the peer (getpeername), because
 * resolver libraries such as musl and c-ares drop answers from an address
 * they did not ask.
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

/* The server a redirected DNS socket asked, as the task wrote it. */
struct aa_dns_origin {
	__u32 family;
	__u16 port;
	__u16 _pad;
	__u32 addr[4];
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct aa_dns_origin);
} DNS_ORIGIN SEC(".maps");

#define AA_LOOPBACK4 0x7f000001

static __always_inline int is_v4_mapped(const __u32 addr[4])
{
	return addr[0] == 0 && addr[1] == 0 && addr[2] == bpf_htonl(0xffff);
}

/* Whether an address the daemon's resolver answered allows this
 * destination now: the port of a host rule, or any port. */
static __always_inline int learned4_match(__u16 port, __u32 addr)
{
	struct aa_learned4_key key = { .port = port };
	__builtin_memcpy(key.addr, &addr, sizeof(addr));
	__u64 now = bpf_ktime_get_boot_ns();
	struct aa_learned_value *value = bpf_map_lookup_elem(&LEARNED4, &key);
	if (value && now < value->expires_ns)
		return 1;
	key.port = 0;
	value = bpf_map_lookup_elem(&LEARNED4, &key);
	return value && now < value->expires_ns;
}

static __always_inline int learned6_match(__u16 port, const __u32 addr[4])
{
	struct aa_learned6_key key = { .port = port };
	__builtin_memcpy(key.addr, addr, 16);
	__u64 now = bpf_ktime_get_boot_ns();
	struct aa_learned_value *value = bpf_map_lookup_elem(&LEARNED6, &key);
	if (value && now < value->expires_ns)
		return 1;
	key.port = 0;
	value = bpf_map_lookup_elem(&LEARNED6, &key);
	return value && now < value->expires_ns;
}

/* Sends a confined task's DNS query to the daemon's resolver. Returns 1
 * when the destination was rewritten. Not redirected (and so refused by
 * the caller): sockets bound to a device (the rewritten packet would leave
 * through it), tasks in another network namespace than the resolver's, and
 * anything while no resolver listens. */
static __always_inline int redirect_dns(struct bpf_sock_addr *ctx, int family)
{
	if (ctx->user_port != bpf_htons(53))
		return 0;
	__u32 zero = 0;
	struct aa_resolver *resolver = bpf_map_lookup_elem(&RESOLVER, &zero);
	if (!resolver || !resolver->port4)
		return 0;
	struct bpf_sock *sk = ctx->sk;
	if (!sk || sk->bound_dev_if)
		return 0;
	if (bpf_get_netns_cookie(ctx) != resolver->netns_cookie)
		return 0;
	__u32 addr[4] = {};
	if (family == AF_INET) {
		addr[0] = ctx->user_ip4;
	} else {
		addr[0] = ctx->user_ip6[0];
		addr[1] = ctx->user_ip6[1];
		addr[2] = ctx->user_ip6[2];
		addr[3] = ctx->user_ip6[3];
	}
	int mapped = family == AF_INET6 && is_v4_mapped(addr);
	if (family == AF_INET6 && !mapped && !resolver->port6)
		return 0;
	struct aa_dns_origin *origin =
		bpf_sk_storage_get(&DNS_ORIGIN, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!origin)
		return 0;
	origin->family = family;
	origin->port = (__u16)ctx->user_port;
	__builtin_memcpy(origin->addr, addr, sizeof(addr));
	if (family == AF_INET) {
		ctx->user_ip4 = bpf_htonl(AA_LOOPBACK4);
		ctx->user_port = resolver->port4;
	} else if (mapped) {
		ctx->user_ip6[3] = bpf_htonl(AA_LOOPBACK4);
		ctx->user_port = resolver->port4;
	} else {
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = 0;
		ctx->user_ip6[3] = bpf_htonl(1);
		ctx->user_port = resolver->port6;
	}
	return 1;
}

/* On a socket whose DNS was redirected, shows the resolver's address as the
 * server the task asked (answers received, and the peer name). */
static __always_inline void restore_dns_origin(struct bpf_sock_addr *ctx, int family)
{
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return;
	struct aa_dns_origin *origin = bpf_sk_storage_get(&DNS_ORIGIN, sk, 0, 0);
	if (!origin)
		return;
	__u32 zero = 0;
	struct aa_resolver *resolver = bpf_map_lookup_elem(&RESOLVER, &zero);
	if (!resolver)
		return;
	if (family == AF_INET) {
		if (origin->family != AF_INET || ctx->user_ip4 != bpf_htonl(AA_LOOPBACK4) ||
		    ctx->user_port != resolver->port4)
			return;
		ctx->user_ip4 = origin->addr[0];
		ctx->user_port = origin->port;
		return;
	}
	__u32 source[4] = { ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3] };
	int from_v4 = is_v4_mapped(source) && source[3] == bpf_htonl(AA_LOOPBACK4) &&
		      ctx->user_port == resolver->port4;
	int from_v6 = source[0] == 0 && source[1] == 0 && source[2] == 0 && source[3] == bpf_htonl(1) &&
		      resolver->port6 && ctx->user_port == resolver->port6;
	if (from_v4 && origin->family == AF_INET) {
		/* An AF_INET6 socket that sent to a v4-mapped server: the send
		 * went through sendmsg4 (which kept the IPv4 form), the answer
		 * comes through here. */
		ctx->user_ip6[3] = origin->addr[0];
		ctx->user_port = origin->port;
		return;
	}
	if ((!from_v4 && !from_v6) || origin->family != AF_INET6)
		return;
	ctx->user_ip6[0] = origin->addr[0];
	ctx->user_ip6[1] = origin->addr[1];
	ctx->user_ip6[2] = origin->addr[2];
	ctx->user_ip6[3] = origin->addr[3];
	ctx->user_port = origin->port;
}

/* Marks a socket as used by a confined task, so that its packets are
 * checked (ancillary data can add options that no sock_addr hook sees). */
static __always_inline void mark_socket(struct bpf_sock *sk)
{
	__u32 *marked = bpf_sk_storage_get(&SOCKET_MARK, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (marked)
		*marked = 1;
}

/* The generation in force when the current task is confined and egress is
 * restricted; NULL otherwise. */
static __always_inline struct aa_generation *restricting_generation(void)
{
	if (!aa_mark_of(bpf_get_current_task_btf()))
		return 0;
	struct aa_generation *gen = aa_active_generation();
	return gen && gen->egress_restricted ? gen : 0;
}

static __always_inline void report_net(__u32 mode, __u16 family, __u32 reason, __u32 detail)
{
	struct aa_event *event = aa_event_start(AA_EVENT_NET, mode);
	if (event) {
		event->family = family;
		event->reason = reason;
		event->detail = detail;
		bpf_ringbuf_submit(event, 0);
	}
}

static __always_inline int egress_check(struct bpf_sock_addr *ctx, int family)
{
	struct task_struct *task = bpf_get_current_task_btf();
	if (!aa_mark_of(task))
		return 1;
	if (ctx->sk)
		mark_socket(ctx->sk);
	__u32 zero = 0;
	__u32 *active = bpf_map_lookup_elem(&ACTIVE, &zero);
	if (!active)
		return 1;
	__u32 slot = *active & 1;
	struct aa_generation *gen = bpf_map_lookup_elem(&GENERATIONS, &slot);
	if (!gen || !gen->egress_restricted)
		return 1;
	int hosts = gen->egress_restricted == AA_EGRESS_HOSTS;
	/* Under host rules, DNS goes to the resolver or nowhere: a query the
	 * redirect cannot take (a device-bound socket, another namespace, no
	 * resolver) must not reach a server the allowlist happens to allow,
	 * such as a stub on 127.0.0.53 under an allowed 127.0.0.0/8. */
	int dns = hosts && ctx->user_port == bpf_htons(53);
	if (dns && redirect_dns(ctx, family))
		return 1;

	__u16 port = (__u16)ctx->user_port;
	__u32 addr6[4];
	int allowed;
	if (family == AF_INET) {
		__u32 addr = ctx->user_ip4;
		allowed = egress4_match(port, addr, slot) || egress4_match(0, addr, slot) ||
			  (hosts && learned4_match(port, addr));
		addr6[0] = addr;
	} else {
		addr6[0] = ctx->user_ip6[0];
		addr6[1] = ctx->user_ip6[1];
		addr6[2] = ctx->user_ip6[2];
		addr6[3] = ctx->user_ip6[3];
		/* ::ffff:a.b.c.d reaches an IPv4 destination: judge it as one. */
		if (is_v4_mapped(addr6))
			allowed = egress4_match(port, addr6[3], slot) || egress4_match(0, addr6[3], slot) ||
				  (hosts && learned4_match(port, addr6[3]));
		else
			allowed = egress6_match(port, addr6, slot) || egress6_match(0, addr6, slot) ||
				  (hosts && learned6_match(port, addr6));
	}
	if (allowed && !dns)
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

SEC("cgroup/recvmsg4")
int dns_recvmsg4(struct bpf_sock_addr *ctx)
{
	restore_dns_origin(ctx, AF_INET);
	return 1;
}

SEC("cgroup/recvmsg6")
int dns_recvmsg6(struct bpf_sock_addr *ctx)
{
	restore_dns_origin(ctx, AF_INET6);
	return 1;
}

SEC("cgroup/getpeername4")
int dns_peername4(struct bpf_sock_addr *ctx)
{
	restore_dns_origin(ctx, AF_INET);
	return 1;
}

SEC("cgroup/getpeername6")
int dns_peername6(struct bpf_sock_addr *ctx)
{
	restore_dns_origin(ctx, AF_INET6);
	return 1;
}

/* Socket creation (inet and inet6 only: other families never reach it). */
SEC("cgroup/sock_create")
int egress_socket(struct bpf_sock *sk)
{
	if (!aa_mark_of(bpf_get_current_task_btf()))
		return 1;
	mark_socket(sk);
	struct aa_generation *gen = restricting_generation();
	if (!gen)
		return 1;
	__u32 type = sk->type, protocol = sk->protocol, reason = 0;
	if (type == 3 /* SOCK_RAW */)
		reason = AA_NET_RAW_SOCKET;
	else if (protocol == 1 /* ICMP */ || protocol == 58 /* ICMPV6 */)
		reason = AA_NET_PING_SOCKET;
	else if (protocol != 6 /* TCP */ && protocol != 17 /* UDP */ && protocol != 136 /* UDP-Lite */)
		reason = AA_NET_PROTOCOL;
	if (!reason)
		return 1;
	report_net(gen->mode, sk->family, reason, type << 16 | (protocol & 0xffff));
	return gen->mode == AA_MODE_AUDIT ? 1 : 0;
}

/* IPv4 options (source routing) and IPv6 routing headers, set for all
 * later packets of the socket. */
SEC("cgroup/setsockopt")
int egress_sockopt(struct bpf_sockopt *ctx)
{
	if (ctx->optlen <= 0)
		return 1;
	int level = ctx->level, name = ctx->optname;
	int routing = (level == 0 /* SOL_IP */ && name == 4 /* IP_OPTIONS */) ||
		      (level == 41 /* SOL_IPV6 */ &&
		       (name == 57 /* IPV6_RTHDR */ || name == 5 /* IPV6_2292RTHDR */ ||
			name == 6 /* IPV6_2292PKTOPTIONS */));
	if (!routing)
		return 1;
	struct aa_generation *gen = restricting_generation();
	if (!gen)
		return 1;
	report_net(gen->mode, level == 0 ? AF_INET : AF_INET6, AA_NET_ROUTING_OPTION,
		   (__u32)level << 16 | (__u32)name);
	return gen->mode == AA_MODE_AUDIT ? 1 : 0;
}

/* Walks an IPv6 packet's extension headers (hop-by-hop, destination
 * options, fragment; at most 8). Leaves in *next the header that follows
 * them and in *offset where it starts. Returns 1 at a routing header or
 * when there are more extension headers than a sender needs, -1 when the
 * packet cannot be read, 0 otherwise; after a fragment that is not the
 * first, *next stays 44 (no transport header follows). */
static __always_inline int ipv6_headers(struct __sk_buff *skb, __u8 *next, __u32 *offset)
{
	if (bpf_skb_load_bytes(skb, 6, next, 1))
		return -1;
	*offset = 40;
	for (int i = 0; i < 8; i++) {
		if (*next == 43 /* routing */)
			return 1;
		if (*next != 0 /* hop-by-hop */ && *next != 60 /* destination options */ &&
		    *next != 44 /* fragment */)
			return 0;
		__u8 header[4] = {};
		if (bpf_skb_load_bytes(skb, *offset, header, 4))
			return -1;
		if (*next == 44 && ((header[2] << 8 | header[3]) & 0xfff8))
			return 0;
		*offset += *next == 44 ? 8 : ((__u32)header[1] + 1) * 8;
		*next = header[0];
	}
	return 1;
}

/* Whether an outgoing packet carries IPv4 options or an IPv6 routing
 * header, which send it somewhere other than its checked destination. */
static __always_inline int routes_elsewhere(struct __sk_buff *skb)
{
	if (skb->protocol == bpf_htons(0x0800 /* ETH_P_IP */)) {
		__u8 first = 0;
		if (bpf_skb_load_bytes(skb, 0, &first, 1))
			return 0;
		return (first & 0x0f) > 5;
	}
	if (skb->protocol != bpf_htons(0x86dd /* ETH_P_IPV6 */))
		return 0;
	__u8 next = 0;
	__u32 offset = 0;
	return ipv6_headers(skb, &next, &offset) == 1;
}

/* The destination port of a TCP, UDP or UDP-Lite packet (network order),
 * 0 for anything else (or a fragment after the first). */
static __always_inline __u16 destination_port(struct __sk_buff *skb)
{
	__u8 next = 0;
	__u32 offset = 0;
	if (skb->protocol == bpf_htons(0x0800 /* ETH_P_IP */)) {
		__u8 first = 0;
		__u16 fragment = 0;
		if (bpf_skb_load_bytes(skb, 0, &first, 1) || bpf_skb_load_bytes(skb, 6, &fragment, 2) ||
		    bpf_skb_load_bytes(skb, 9, &next, 1))
			return 0;
		if (fragment & bpf_htons(0x1fff))
			return 0;
		offset = ((__u32)first & 0x0f) * 4;
	} else if (skb->protocol != bpf_htons(0x86dd /* ETH_P_IPV6 */) ||
		   ipv6_headers(skb, &next, &offset) != 0) {
		return 0;
	}
	if (next != 6 && next != 17 && next != 136)
		return 0;
	__u16 port = 0;
	if (bpf_skb_load_bytes(skb, offset + 2, &port, 2))
		return 0;
	return port;
}

SEC("cgroup_skb/egress")
int egress_packet(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;
	if (!sk)
		return 1;
	sk = bpf_sk_fullsock(sk);
	if (!sk || !bpf_sk_storage_get(&SOCKET_MARK, sk, 0, 0))
		return 1;
	struct aa_generation *gen = aa_active_generation();
	if (!gen || !gen->egress_restricted)
		return 1;
	if (routes_elsewhere(skb)) {
		report_net(gen->mode, sk->family, AA_NET_ROUTING_PACKET, 0);
		return gen->mode == AA_MODE_AUDIT ? 1 : 0;
	}
	/* Under host rules DNS goes to the resolver or nowhere, also from a
	 * socket connected (or a connection opened) before the generation
	 * with host names came into force: its sends meet no connect hook. */
	if (gen->egress_restricted == AA_EGRESS_HOSTS && destination_port(skb) == bpf_htons(53)) {
		report_net(gen->mode, sk->family, AA_NET_DNS_PACKET, 53);
		return gen->mode == AA_MODE_AUDIT ? 1 : 0;
	}
	return 1;
}

char LICENSE[] SEC("license") = "GPL";
