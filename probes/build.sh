#!/usr/bin/env bash
# Rebuilds the committed probe objects (*.bpf.o) and the ABI layout file.
# Byte-identical on any machine with Debian's clang-19/llvm-19 and libbpf-dev:
# it compiles from this folder with relative paths, and strips DWARF (BTF,
# which aya needs for CO-RE and tp_btf, is kept).
set -euo pipefail
cd "$(dirname "$0")"
CLANG=${CLANG:-clang-19}
STRIP=${STRIP:-llvm-strip-19}
arch_include=/usr/include/$(uname -m)-linux-gnu

for src in syscall_guard task_lifecycle egress io_uring_guard file_access bench_floor; do
	"$CLANG" -g -O2 -target bpf -D__TARGET_ARCH_x86 \
		-I. -I"$arch_include" \
		-fdebug-prefix-map="$PWD"=. -fno-ident \
		-c "$src.bpf.c" -o "$src.bpf.o"
	"$STRIP" -g "$src.bpf.o"
done

# The userspace mirror (src/loader/abi.rs) is tested against these numbers.
layout=$(mktemp -d)
trap 'rm -rf "$layout"' EXIT
cat > "$layout/layout.c" <<'C'
#include <stddef.h>
#include <stdio.h>
#include "aa_policy.h"
#define SIZE(t) printf("size %s %zu\n", #t, sizeof(struct t))
#define OFF(t, f) printf("offset %s.%s %zu\n", #t, #f, offsetof(struct t, f))
int main(void)
{
	SIZE(aa_generation); OFF(aa_generation, mode); OFF(aa_generation, syscall_allow);
	OFF(aa_generation, policy_sha256);
	SIZE(aa_task_mark); OFF(aa_task_mark, guarded); SIZE(aa_confined);
	SIZE(aa_config); OFF(aa_config, loader_pgid);
	SIZE(aa_pending); OFF(aa_pending, stopped_by_loader);
	SIZE(aa_egress4_key); OFF(aa_egress4_key, port); OFF(aa_egress4_key, addr);
	SIZE(aa_egress6_key); OFF(aa_egress6_key, addr);
	SIZE(aa_rule_value); OFF(aa_rule_value, slots); OFF(aa_rule_value, allow); OFF(aa_rule_value, deny);
	SIZE(aa_path_key); OFF(aa_path_key, path);
	SIZE(aa_event); OFF(aa_event, syscall_nr); OFF(aa_event, compat); OFF(aa_event, family);
	OFF(aa_event, port); OFF(aa_event, addr); OFF(aa_event, comm); OFF(aa_event, path);
	OFF(aa_event, reason); OFF(aa_event, detail);
	SIZE(aa_learned4_key); OFF(aa_learned4_key, port); SIZE(aa_learned6_key); OFF(aa_learned6_key, port);
	SIZE(aa_learned_value); SIZE(aa_resolver); OFF(aa_resolver, port6); OFF(aa_resolver, netns_cookie);
	return 0;
}
C
cc -Wno-attributes -I. -I"$arch_include" -o "$layout/layout" "$layout/layout.c"
"$layout/layout" > abi_layout.txt
