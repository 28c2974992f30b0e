#!/bin/bash
# Build the vdpad Debian package: release binaries, man pages and shell completions
# generated from the clap definitions, then `cargo deb --no-build`.
#
#   tools/deb/build.sh            # prints the path of the .deb
#
# Needs cargo-deb (`cargo install cargo-deb`). Honours CARGO_TARGET_DIR. The package
# contents are listed in tools/Cargo.toml, [package.metadata.deb]; docs/operations.md
# ("Debian package") says what goes where.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo-deb >/dev/null || { echo "build.sh: needs cargo-deb (cargo install cargo-deb)" >&2; exit 2; }
TARGET=${CARGO_TARGET_DIR:-target}

cargo build --release -p vdpad --bins >&2
GEN=tools/deb/generated
rm -rf "$GEN"
"$TARGET/release/vdpad-gen" man "$GEN/man" >/dev/null
gzip -9n "$GEN"/man/*.8
"$TARGET/release/vdpad-gen" completions "$GEN/completions" >/dev/null
# cargo-deb prints the path of the package it wrote on stdout.
cargo deb -p vdpad --no-build --strip
