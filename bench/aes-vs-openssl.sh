#!/usr/bin/env bash
# Measures kcpgate's AES-CFB encryption of 1400-byte packets and `openssl speed
# -evp aes-*-cfb` on the same machine in the same run, and prints the ratio.
# Usage: bench/aes-vs-openssl.sh [seconds per measurement, default 3]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-3}
command -v openssl >/dev/null || { echo "error: openssl not found (apt-get install -y openssl)" >&2; exit 1; }

echo "==> kcpgate: criterion, crypto_cfb_encrypt_1400"
cargo bench -p kcpgate-core --bench pipeline -- --warm-up-time 1 --measurement-time "$secs" crypto_cfb_encrypt_1400 >/dev/null

printf '\n%-8s %14s %14s %7s\n' cipher "kcpgate MB/s" "openssl MB/s" ratio
for pair in "aes:aes-256-cfb" "aes-128:aes-128-cfb"; do
    ours=${pair%%:*}
    theirs=${pair#*:}
    ns=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["mean"]["point_estimate"])' \
        "target/criterion/crypto_cfb_encrypt_1400/$ours/new/estimates.json")
    # openssl prints thousands of bytes per second for the one block size asked for.
    kbps=$(openssl speed -evp "$theirs" -bytes 1400 -seconds "$secs" 2>/dev/null | awk 'tolower($1) == "'"$theirs"'" {sub(/k$/, "", $2); print $2}')
    python3 - "$ours" "$ns" "$kbps" <<'PY'
import sys
name, ns, kbps = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
ours = 1400 / ns * 1e3          # MB/s (10^6 bytes)
theirs = kbps / 1e3
print(f"{name:<8} {ours:14.1f} {theirs:14.1f} {ours / theirs:7.2f}")
PY
done
