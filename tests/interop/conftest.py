import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import pytest


@pytest.fixture(autouse=True, params=["ipsec-mb", "ring"])
def crypto(request, monkeypatch):
    """Every case twice: natt-pcap with each crypto library for AES-GCM and GMAC
    (`--crypto`; ChaCha20-Poly1305 is ring's either way)."""
    monkeypatch.setenv("NATT_CRYPTO", request.param)
    return request.param
