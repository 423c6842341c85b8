#!/usr/bin/env bash
# Release readiness, run by `.ci/run`: what a user meets on crates.io and
# docs.rs. Crates and features are read from `cargo metadata`, so a new
# crate or feature is covered without editing this file.
#   ./scripts/release-check.sh            # every check
#   ./scripts/release-check.sh docs deny  # only the named ones
# Checks: rust-version.
set -euo pipefail
cd "$(dirname "$0")/.."

wanted=("$@")
want() { ((${#wanted[@]} == 0)) || [[ " ${wanted[*]} " == *" $1 "* ]]; }
step() { echo "release-check: $*" >&2; }

# meta QUERY: answers from `cargo metadata` about the workspace members.
#   published        the crates published to crates.io (no `publish = false`)
#   rust-versions    "crate rust-version" per member
#   feature-sets     "crate|cargo feature flags" per feature combination
#                    of every member that has features
meta() {
    cargo metadata --format-version 1 --no-deps | python3 -c '
import itertools, json, sys
query = sys.argv[1]
meta = json.load(sys.stdin)
members = set(meta["workspace_members"])
pkgs = sorted((p for p in meta["packages"] if p["id"] in members), key=lambda p: p["name"])
for p in pkgs:
    if query == "published" and p["publish"] != []:
        print(p["name"])
    elif query == "rust-versions":
        print(p["name"], p["rust_version"] or "none")
    elif query == "feature-sets":
        features = sorted(f for f in p["features"] if f != "default")
        if not features:
            continue
        # Every combination up to 4 features (16 builds), else each one alone.
        if len(features) <= 4:
            sets = [c for n in range(len(features) + 1) for c in itertools.combinations(features, n)]
        else:
            sets = [()] + [(f,) for f in features] + [tuple(features)]
        for s in sets:
            flags = "--no-default-features"
            if s:
                flags += " --features " + ",".join(s)
            print(p["name"] + "|" + flags)
        if "default" in p["features"]:
            print(p["name"] + "|")  # as shipped: default features
' "$1"
}

if want rust-version; then
    # Every crate's rust-version is the toolchain this run builds and tests
    # with: no other toolchain is checked, so no other may be claimed.
    step "rust-version of every crate against rustc"
    rustc_version="$(rustc --version | sed -n 's/^rustc \([0-9]*\.[0-9]*\).*/\1/p')"
    bad=0
    while read -r name version; do
        if [[ "${version%.0}" != "$rustc_version" ]]; then
            echo "release-check: $name says rust-version = $version, CI builds and tests with rustc $rustc_version" >&2
            bad=1
        fi
    done < <(meta rust-versions)
    if ((bad)); then
        echo "release-check: set rust-version (workspace.package) to the toolchain CI uses" >&2
        exit 1
    fi
fi

step "all checks passed"
