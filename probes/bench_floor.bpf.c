/* Benchmark floor: empty programs on the hooks every syscall passes.
 *
 * Why it exists: attaching any sys_enter or sys_exit program moves every
 * task onto the traced-syscall slow path. The benchmark measures the
 * guard (sys_enter) and the file check (sys_exit) against this floor, so
 * their own cost is visible apart from the hooks'.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("tp_btf/sys_enter")
int bench_floor(unsigned long long *ctx)
{
	return 0;
}

SEC("tp_btf/sys_exit")
int bench_floor_exit(unsigned long long *ctx)
{
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
