import os
from pathlib import Path

import pytest

from zpay.custody import Custody, CustodyError, custody_from_settings


def test_seal_open_and_binding_to_the_wallet_id() -> None:
    custody = Custody({1: os.urandom(32)}, 1)
    sealed = custody.seal("skey_a", b"secret-bytes")
    assert b"secret-bytes" not in sealed.ciphertext
    assert custody.open("skey_a", sealed) == b"secret-bytes"
    with pytest.raises(CustodyError):
        custody.open("skey_b", sealed)  # a ciphertext moved to another row fails
    other = custody.seal("skey_b", b"x")
    from dataclasses import replace

    with pytest.raises(CustodyError):  # a data key moved to another row fails too
        custody.open("skey_a", replace(sealed, wrapped_data_key=other.wrapped_data_key))


def test_rotation_rewraps_data_keys_without_touching_the_secret() -> None:
    old, new = os.urandom(32), os.urandom(32)
    sealed = Custody({1: old}, 1).seal("w", b"s")
    rotated = Custody({1: old, 2: new}, 2)
    rewrapped = rotated.rewrap("w", sealed)
    assert rewrapped.key_version == 2 and rewrapped.ciphertext == sealed.ciphertext
    assert Custody({2: new}, 2).open("w", rewrapped) == b"s"
    with pytest.raises(CustodyError):
        Custody({2: new}, 2).open("w", sealed)  # the old master key is gone


def test_master_key_required_off_local_networks(tmp_path: Path) -> None:
    with pytest.raises(CustodyError):
        custody_from_settings("", 1, "", data_dir=tmp_path, allow_generated=False)
    a = custody_from_settings("", 1, "", data_dir=tmp_path, allow_generated=True)
    b = custody_from_settings("", 1, "", data_dir=tmp_path, allow_generated=True)
    assert b.open("w", a.seal("w", b"k")) == b"k"  # the generated key file is reused
    assert (tmp_path / "master.key").stat().st_mode & 0o777 == 0o600
    with pytest.raises(CustodyError):
        custody_from_settings("bm90LWEta2V5", 1, "", data_dir=tmp_path, allow_generated=False)
