#!/usr/bin/env bash
# Move a file of random data from domain 1 to domain 2 of a simulated Xen host with
# `trio-vchan cat`, check that it arrived intact (sha256) and print the rate.
#
#   scripts/demo-transfer.sh [--size MIB] [--buffer-size BYTES] [--no-install]
#
# By default it creates .venv in the clone (python3 -m venv; on Debian that needs the
# python3-venv package) and installs trio-vchan into it. --no-install uses the `trio-vchan`
# already on PATH instead. The data and the copy live in a temporary directory, removed at exit.
set -euo pipefail

size_mib=256
buffer_size=1M
install=yes
while (($#)); do
    case "$1" in
        --size) size_mib="$2"; shift 2 ;;
        --buffer-size) buffer_size="$2"; shift 2 ;;
        --no-install) install=no; shift ;;
        -h | --help) sed -n '2,9s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) echo "demo-transfer: unknown argument: $1 (try --help)" >&2; exit 2 ;;
    esac
done
if ! [[ "$size_mib" =~ ^[1-9][0-9]*$ ]]; then
    echo "demo-transfer: --size is a whole number of MiB, not '$size_mib'" >&2
    exit 2
fi

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ "$install" == yes ]]; then
    echo "== installing trio-vchan into $repo/.venv"
    python3 -m venv "$repo/.venv"
    "$repo/.venv/bin/pip" install -q "$repo"
    PATH="$repo/.venv/bin:$PATH"
fi
command -v trio-vchan > /dev/null || { echo "demo-transfer: trio-vchan is not on PATH" >&2; exit 1; }

work="$(mktemp -d "${TMPDIR:-/tmp}/trio-vchan-demo.XXXXXX")"
trap 'rm -rf "$work"' EXIT

echo "== writing $size_mib MiB of random data"
head -c "$((size_mib * 1024 * 1024))" /dev/urandom > "$work/original"

echo "== trio-vchan $(trio-vchan --version | cut -d' ' -f2): domain 1 sends, domain 2 receives" \
    "(rings of $buffer_size)"
# Domain 2 listens for domain 1 and writes what arrives; domain 1 connects and sends. The
# receiver shows its progress on stderr and keeps a copy of it, for the rate.
transfer() {
    set -euo pipefail
    trio-vchan cat --domid 2 --buffer-size "$buffer_size" --progress -l 1 demo \
        > "$work/copy" 2> >(tee "$work/progress" >&2) < /dev/null &
    receiver=$!
    trap 'kill "$receiver" 2> /dev/null || true' EXIT # interrupted: do not leave it waiting
    trio-vchan cat --domid 1 --buffer-size "$buffer_size" --quiet 2 demo < "$work/original"
    wait "$receiver"
    wait # and the tee of its progress (bash waits for process substitutions too)
}
export -f transfer
export work buffer_size
trio-vchan sim -- bash -c transfer

original="$(sha256sum < "$work/original" | cut -d' ' -f1)"
copy="$(sha256sum < "$work/copy" | cut -d' ' -f1)"
echo "   sent     sha256 $original"
echo "   received sha256 $copy"
if [[ "$original" != "$copy" ]]; then
    echo "FAILED: the copy differs from the original" >&2
    exit 1
fi
rate="$(tr '\r' '\n' < "$work/progress" | grep -o '([^()]*/s)' | tail -n 1 | tr -d '()')"
echo "OK: $size_mib MiB arrived intact at ${rate:-an unknown rate}"
