#!/usr/bin/env bash
# The main job: run the ESP engine over the sample captures in samples/ and show what it
# decided for every packet. Decrypts natt.pcap (NAT-T traffic from four clients, with
# keepalives, IKE, a fragmented packet, a NAT rebinding, and hostile packets) and
# encrypts plain.pcap (replies from the protected network). Output pcaps go to out/.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo >/dev/null || scripts/setup.sh
cargo build --release -q -p natt-pcap
BIN=target/release/natt-pcap
mkdir -p out

echo "== natt-pcap check -c samples/headend.json"
$BIN check -c samples/headend.json
echo
echo "== natt-pcap decap -c samples/headend.json -r samples/natt.pcap -w out/decrypted.pcap"
$BIN decap -c samples/headend.json -r samples/natt.pcap -w out/decrypted.pcap
echo
echo "== natt-pcap encap -c samples/headend.json -r samples/plain.pcap -w out/encrypted.pcap"
$BIN encap -c samples/headend.json -r samples/plain.pcap -w out/encrypted.pcap
echo
echo "wrote out/decrypted.pcap and out/encrypted.pcap"
