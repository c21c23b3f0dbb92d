"""The installed package (a wheel, not only the checkout) finds the chain registry and the
local test token's artifact."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import zipfile

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_wheel_carries_and_finds_the_registry(tmp_path: pathlib.Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    [wheel] = tmp_path.glob("zpay-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "zpay/_chains_data/networks/solana-local.toml" in names
    assert "zpay/_chains_data/networks/base-sepolia.toml" in names
    assert "zpay/_chains_data/evm/artifacts/ZpayTestUSD.json" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = ("from zpay.chains.registry import chains_data_dir, known_networks;"
             "print(chains_data_dir()); print(','.join(known_networks()))")
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", probe], env=env, cwd=tmp_path, check=True,
                         capture_output=True, text=True).stdout.splitlines()
    assert out[0] == str(site / "zpay" / "_chains_data")
    assert {"solana-local", "evm-local", "base", "ethereum-sepolia"} <= set(out[1].split(","))
