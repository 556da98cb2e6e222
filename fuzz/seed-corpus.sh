#!/usr/bin/env bash
# Seeds fuzz/corpus/<target>/ from ../shared/corpus (and the example
# configuration in config/), each sample laid out as its target's input.
# The layout code is shared with the property tests (fuzz/targets).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --quiet -p leadgate-fuzz-targets --bin seed-corpus -- fuzz/corpus
