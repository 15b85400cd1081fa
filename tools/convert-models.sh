#!/usr/bin/env bash
# Makes the derived models of tools/models.sha256 (lines of three fields: sha256, file, SOURCE:TYPE)
# from the fetched ones with specd-quantize, and checks each result's sha256: the conversion is
# deterministic, so a mismatch means the converter or its input changed. `make models` runs it after
# tools/fetch-models.sh.
#
#   tools/convert-models.sh DIR SPECD_QUANTIZE
#
# A derived file already in DIR with the right sha256 is left alone; one with another sha256 is made
# again. A result that does not match is removed and reported loudly.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
manifest=$here/models.sha256
dir=${1:?usage: convert-models.sh DIR SPECD_QUANTIZE}
quantize=${2:?usage: convert-models.sh DIR SPECD_QUANTIZE}

die() { printf 'convert-models: error: %s\n' "$*" >&2; exit 1; }

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

[ -x "$quantize" ] || die "$quantize not found (build it with make)"

failed=0
while read -r want name from; do
    src=${from%%:*}
    type=${from##*:}
    if [ -f "$dir/$name" ]; then
        have=$(sha256_of "$dir/$name")
        if [ "$have" = "$want" ]; then
            echo "convert-models: $name: present, sha256 ok"
            continue
        fi
        echo "convert-models: $name: present but sha256 is $have, expected $want; converting again" >&2
    fi
    [ -f "$dir/$src" ] || die "$dir/$src not found: run tools/fetch-models.sh $dir first"
    echo "convert-models: $name: converting $src to $type"
    "$quantize" "$dir/$src" "$dir/$name" "$type" || die "specd-quantize failed for $name"
    got=$(sha256_of "$dir/$name")
    if [ "$got" = "$want" ]; then
        echo "convert-models: $name: made, sha256 $got"
    else
        rm -f "$dir/$name"
        printf '\nconvert-models: ******** SHA256 MISMATCH for %s ********\n' "$name" >&2
        printf 'convert-models:   expected %s (tools/models.sha256)\n' "$want" >&2
        printf 'convert-models:   got      %s\n' "$got" >&2
        printf 'convert-models:   specd-quantize or %s changed; the file was removed\n\n' "$src" >&2
        failed=1
    fi
done < <(awk 'NF == 3 { print $1, $2, $3 }' "$manifest")
exit $failed
