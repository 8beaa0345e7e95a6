/* Benchmark floor: an empty program on the syscall guard's hook.
 *
 * Why it exists: attaching any sys_enter program moves every task onto the
 * traced-syscall slow path. The benchmark measures the guard against this
 * floor, so the guard's own cost is visible apart from the hook's.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("tp_btf/sys_enter")
int bench_floor(unsigned long long *ctx)
{
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
