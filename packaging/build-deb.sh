#!/usr/bin/env bash
# Builds target/debian/aa-policyd_*.deb: a release build, the man pages and
# completions generated from the binary's own CLI definitions, then cargo-deb.
# Extra arguments go to cargo-deb (e.g. --deb-version 0.1.0-2).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked
cargo build --release --locked
rm -rf target/packaging
target/release/aa-policyd generate-docs target/packaging/docs
gzip -9n target/packaging/docs/*.1
cargo deb --no-build "$@"
