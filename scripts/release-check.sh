#!/usr/bin/env bash
# Release readiness, run by `.ci/run`: what a user meets on crates.io and
# docs.rs. Crates and features are read from `cargo metadata`, so a new
# crate or feature is covered without editing this file.
#   ./scripts/release-check.sh            # every check
#   ./scripts/release-check.sh docs deny  # only the named ones
# Checks: rust-version, docs, features, publish, deny.
set -euo pipefail
cd "$(dirname "$0")/.."

wanted=("$@")
want() { ((${#wanted[@]} == 0)) || [[ " ${wanted[*]} " == *" $1 "* ]]; }
# Each line says how many seconds the script had run: what each check costs.
step() { echo "release-check: [${SECONDS}s] $*" >&2; }

# meta QUERY: answers from `cargo metadata` about the workspace members.
#   published        the crates published to crates.io (no `publish = false`)
#   published-versions  "name-version" of each of those
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
    elif query == "published-versions" and p["publish"] != []:
        print(p["name"] + "-" + p["version"])
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
        # As shipped (default features), unless a combination above is it.
        default = set(p["features"].get("default", []))
        if default and all(set(s) != default for s in sets):
            print(p["name"] + "|")
        for s in sets:
            flags = "--no-default-features"
            if s:
                flags += " --features " + ",".join(s)
            print(p["name"] + "|" + flags)
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

if want docs; then
    # What docs.rs renders: every published crate, every feature; warnings
    # (broken intra-doc links included) fail. The unpublished crates' doc
    # comments double as clap help and test notes, not as rendered pages.
    args=()
    while read -r name; do args+=(-p "$name"); done < <(meta published)
    step "cargo doc --no-deps --all-features ${args[*]}, warnings denied"
    RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --all-features --locked "${args[@]}"
fi

if want features; then
    # Each crate that has features, built (lints denied) with each
    # combination: no default features, each subset, as shipped.
    while IFS='|' read -r name flags; do
        step "features: $name ${flags:-(default)}"
        # shellcheck disable=SC2086 # flags are separate words
        cargo clippy -p "$name" --lib --locked $flags -- -D warnings
        # shellcheck disable=SC2086
        cargo test -p "$name" --release --lib --locked $flags -q
    done < <(meta feature-sets)
fi

if want publish; then
    # `cargo publish --dry-run` of every published crate, as crates.io
    # would get them: cargo packages them in dependency order, puts each
    # archive in a temporary registry that overlays crates.io, and builds
    # each crate from its archive alone against its siblings' archives, so
    # nothing needs to be on crates.io first. A missing file, a path
    # dependency without a version or a crate that does not build outside
    # the workspace fails here. Crates with `publish = false` are skipped.
    mapfile -t published < <(meta published)
    # Cargo unpacks the overlay's archives under its registry cache and
    # never unpacks the same name and version again: drop copies of ours
    # left by an earlier run, or the build would check stale sources.
    while read -r name_version; do
        for d in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/; do
            case "$(basename "$d")" in index.crates.io-*) continue ;; esac
            rm -rf "${d:?}$name_version"
        done
    done < <(meta published-versions)
    # Cargo also treats a registry crate of one name and version as
    # immutable and reuses its build: our crates change without a version
    # bump, so the verification builds start from an empty target directory.
    rm -rf target/release-check-package
    step "cargo publish --workspace --dry-run: ${published[*]}"
    # --allow-dirty: a developer runs this before committing; CI's clone is clean.
    cargo publish --workspace --dry-run --locked --allow-dirty --target-dir target/release-check-package
fi

if want deny; then
    ./scripts/install-cargo-tools.sh cargo-deny
    # Licenses and sources of everything built, dev-dependencies included.
    step "cargo deny check licenses sources (whole workspace)"
    cargo deny --workspace --all-features check licenses sources
    # Duplicate major versions: in what users of the published crates
    # compile (normal and build dependencies, every feature).
    excluded=()
    while read -r name; do excluded+=(--exclude "$name"); done < <(
        comm -23 <(cargo metadata --format-version 1 --no-deps |
            python3 -c 'import json,sys; m=json.load(sys.stdin); print("\n".join(sorted(p["name"] for p in m["packages"])))') \
            <(meta published | sort)
    )
    step "cargo deny check bans (published crates, no dev-dependencies)"
    cargo deny --workspace --all-features --exclude-dev "${excluded[@]}" check bans
fi

step "all checks passed"
