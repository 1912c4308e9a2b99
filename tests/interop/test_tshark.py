"""Our encapsulated packets through Wireshark's ESP dissector: with the SA's key,
tshark decrypts every one, reports a good ICV, and dissects the inner packet we put in.
AES-GCM without ESN (tshark has no ESN: such packets always show a bad ICV, see
shared/notes/oracles.md). A control run with a wrong key must show bad ICVs, so the
check can fail."""

import itertools

import pytest
from scapy.all import Ether, wrpcap

from natt import MAC_PEER, MAC_US, SPI_OUT, Case, key_bytes, run_natt_pcap, tshark_available, tshark_esp, write_config
from test_scapy import inner_packets

CASES = [
    Case(alg=alg, esn=False, mode=mode, inner=inner if mode == "tunnel" else outer, outer=outer, encap=encap)
    for alg, mode, inner, outer, encap in itertools.product(["aes128-gcm", "aes256-gcm"], ["tunnel", "transport"], [4, 6], [4, 6], [True, False])
    if mode == "tunnel" or inner == outer
]

FIELDS = ["frame.number", "esp.spi", "esp.sequence", "esp.icv_good", "esp.icv_bad", "ip.dst", "ipv6.dst", "udp.dstport"]


@pytest.fixture(scope="module", autouse=True)
def need_tshark():
    assert tshark_available(), "tshark is not installed (scripts/test.sh installs it)"


def encapsulate(c, tmp_path):
    cfg = tmp_path / "sas.json"
    write_config(cfg, [c.sa_json("outbound", SPI_OUT)])
    plain = inner_packets(c, "out")
    wrpcap(str(tmp_path / "plain.pcap"), [Ether(src=MAC_PEER, dst=MAC_US) / p for p in plain])
    lines, _ = run_natt_pcap("encap", str(cfg), str(tmp_path / "plain.pcap"), str(tmp_path / "esp.pcap"))
    assert all(l["verdict"] == "accepted" for l in lines)
    return plain


@pytest.mark.parametrize("c", CASES, ids=str)
def test_wireshark_decrypts_with_good_icv(c, tmp_path):
    plain = encapsulate(c, tmp_path)
    rows = tshark_esp(str(tmp_path / "esp.pcap"), c, SPI_OUT, FIELDS)
    assert len(rows) == len(plain)
    for k, (row, p) in enumerate(zip(rows, plain)):
        assert row.get("esp.icv.good") == ["1"] or row.get("esp.icv.good") == [True], f"{c} frame {k + 1}: {row}"
        assert row.get("esp.icv.bad") in (["0"], [False], None), row
        assert row.get("esp.sequence") == [str(k + 1)], row
        # The decrypted inner packet is the one we sent.
        if c.mode == "tunnel":
            key = "ip.dst" if c.inner == 4 else "ipv6.dst"
            assert c.i["client"] in row.get(key, []), f"{c}: inner destination not dissected: {row}"
        else:
            assert "1701" in row.get("udp.dstport", []), f"{c}: transport payload not dissected: {row}"


def test_wrong_key_shows_bad_icv(tmp_path, monkeypatch):
    c = Case()
    encapsulate(c, tmp_path)
    import natt
    real = natt.key_bytes
    monkeypatch.setattr(natt, "key_bytes", lambda alg, spi: bytes([real(alg, spi)[0] ^ 0xFF]) + real(alg, spi)[1:])
    rows = tshark_esp(str(tmp_path / "esp.pcap"), c, SPI_OUT, FIELDS)
    assert rows and all(r.get("esp.icv.good") in (["0"], [False], None) for r in rows), rows
