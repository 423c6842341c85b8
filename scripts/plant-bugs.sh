#!/usr/bin/env bash
# Plants known one-line bugs, one at a time, in a scratch copy of the tree
# and checks that the tests catch each one (issue 11: three such bugs once
# passed every test).
#   ./scripts/plant-bugs.sh [NAME...]     (default: every bug)
# Prints "caught" or "MISSED" per bug; exits non-zero if any bug is missed
# or can no longer be planted (the code it patches moved: update the
# pattern here). The real tree is never modified. The scratch copy lives in
# a temporary directory; its build goes to target/plant-bugs (kept between
# runs, so a second run only rebuilds the patched crates).
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"

scratch="$(mktemp -d "${TMPDIR:-/tmp}/vmmio-plant-bugs.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
export CARGO_TARGET_DIR="$repo/target/plant-bugs"

# Copies the tracked tree (with uncommitted edits) into the scratch copy.
git ls-files -z --cached --others --exclude-standard \
    | tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -xf - -C "$scratch"

# plant NAME PATH PERL: applies the perl substitution PERL (run with -0pi,
# so it sees a whole file) to the .rs files at or under PATH; fails unless it
# changed exactly one file.
plant() {
    local dir="$scratch/$2" changed=0 f
    while IFS= read -r -d '' f; do
        cp "$f" "$f.orig"
        perl -0pi -e "$3" "$f"
        if cmp -s "$f" "$f.orig"; then
            rm "$f.orig"
        else
            changed=$((changed + 1))
        fi
    done < <(find "$dir" -name '*.rs' -print0)
    [ "$changed" -eq 1 ]
}

# unplant PATH: restores the files `plant` changed.
unplant() {
    local f root="$scratch/$1"
    [ -d "$root" ] || root="$(dirname "$root")"
    while IFS= read -r -d '' f; do
        mv "$f" "${f%.orig}"
    done < <(find "$root" -name '*.rs.orig' -print0)
}

# The bugs: NAME, directory, perl substitution, test command (run in the
# scratch copy; the bug is caught when it fails).
names=(used-idx-before-elem queue-high-halves-ignored drop-frees-live-queue avail-idx-before-entry)
declare -A dir perl tests
dir[used-idx-before-elem]=crates/device/src/queue
perl[used-idx-before-elem]='s/(\n\s*)(ring\.write_u64\(used::ring\(slot\) as usize, elem\)\?;)(\s*let next = self\.next_used\.wrapping_add\(1\);)/$1let next = self.next_used.wrapping_add(1);$1ring.store_u16(used::IDX as usize, next, Ordering::Release)?;$1$2/'
tests[used-idx-before-elem]="cargo test -q -p vmmio-device"

dir[queue-high-halves-ignored]=crates/device/src
perl[queue-high-halves-ignored]='s/(mmio::QUEUE_DESC_HIGH =>) queue\.desc = with_high\(queue\.desc, value\),/$1 {}/; s/(mmio::QUEUE_DEVICE_HIGH =>) queue\.device = with_high\(queue\.device, value\),/$1 {}/'
tests[queue-high-halves-ignored]="cargo test -q -p vmmio-device"

dir[drop-frees-live-queue]=crates/driver/src/queue/split.rs
perl[drop-frees-live-queue]='s/(fn drop\(&mut self\) \{\s*)if self\.released \{/${1}if self.released || !self.released {/'
tests[drop-frees-live-queue]="cargo test -q -p vmmio-driver"

# Not one of issue 11's three, found while writing the driver's ordering
# oracle: every other driver test passed with it.
dir[avail-idx-before-entry]=crates/driver/src/queue/split.rs
perl[avail-idx-before-entry]='s/(\n\s*)(let v = self\.raw16\(head\);\s*self\.mem\.store16\(self\.avail_off \+ 4 \+ 2 \* slot, v\);)\s*fence\(Ordering::Release\);(\s*self\.avail_idx = self\.avail_idx\.wrapping_add\(1\);\s*let v = self\.raw16\(self\.avail_idx\);\s*self\.mem\.store16\(self\.avail_off \+ off\(avail::IDX\), v\);)/$3$1$2/'
tests[avail-idx-before-entry]="cargo test -q -p vmmio-driver"

selected=("$@")
[ ${#selected[@]} -gt 0 ] || selected=("${names[@]}")

failed=0
for name in "${selected[@]}"; do
    if [ -z "${dir[$name]+x}" ]; then
        echo "plant-bugs: unknown bug $name (known: ${names[*]})" >&2
        exit 2
    fi
    if ! plant "$name" "${dir[$name]}" "${perl[$name]}"; then
        echo "plant-bugs: $name: CANNOT PLANT (pattern not found once in ${dir[$name]})"
        unplant "${dir[$name]}"
        failed=1
        continue
    fi
    log="$CARGO_TARGET_DIR/$name.log"
    mkdir -p "$CARGO_TARGET_DIR"
    if (cd "$scratch" && ${tests[$name]}) >"$log" 2>&1; then
        echo "plant-bugs: $name: MISSED (every test passed; log: $log)"
        failed=1
    elif grep -q -e '^error\[E[0-9]*\]' -e 'could not compile' "$log"; then
        echo "plant-bugs: $name: DOES NOT BUILD (log: $log)"
        failed=1
    else
        # The names listed in the last "failures:" block of each binary.
        failing="$(awk '/^failures:$/ { block = 1; names = ""; next }
            block && /^    [^ ]+$/ { names = names " " $1 }
            /^test result/ { if (block) all = all names; block = 0 }
            END { print all }' "$log")"
        echo "plant-bugs: $name: caught by:$failing"
    fi
    unplant "${dir[$name]}"
done
exit "$failed"
