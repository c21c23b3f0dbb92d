"""Set-up of a local EVM network (anvil): starting an embedded anvil, topping the relayer
up with ETH, deploying the test token (ZpayTestUSD, from its committed artifact) for every
token the registry leaves without an address, the relayer key file kept in a state
directory, and the chain's identity. `EvmAdapter.local`, `.embedded` and `.open` use these;
nothing here is needed for a public network.

Identity: zpay pairs a local chain with its books (`zpay.services.bootstrap`), so it must
recognise the chain. The mark is a random 32-byte id zpay writes ON the chain at its first
start (`anvil_setStorageAt`, slot 0 of an address derived from "zpay.instance" that nobody
holds a key for). It lives and dies with the chain's history, embedded (anvil state file)
or external (`ZPAY_RPC_URL_EVM_LOCAL`): a deleted state file or a node restarted empty has
no mark, gets a new id, and the pairing refuses it beside books of the old one.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from eth_utils import keccak

from zpay.chains import evm_tx
from zpay.chains.anvil import AnvilProcess
from zpay.chains.evm_relayer import decode_key, to_hex, translated, with_headroom
from zpay.chains.protocol import ChainError
from zpay.chains.redaction import redact_url
from zpay.chains.registry import chains_data_dir

if TYPE_CHECKING:
    from zpay.chains.evm import EvmAdapter

__all__ = [
    "INSTANCE_MARK_ADDRESS",
    "check_chain_id",
    "deploy_test_tokens",
    "fund_relayer",
    "identify_chain",
    "load_or_create_key",
    "load_test_token_artifact",
    "redact_url",
    "start_anvil",
]

log = logging.getLogger(__name__)

INSTANCE_MARK_ADDRESS = evm_tx.checksum("0x" + keccak(b"zpay.instance")[:20].hex())
INSTANCE_MARK_SLOT = "0x0"
# anvil writes its state file on exit (also when zpay dies: see `zpay.chains.anvil`) and
# every this many seconds, which bounds what a machine crash can lose.
STATE_INTERVAL_S = 1


async def start_anvil(chain_id: int, state_path: Path | None) -> AnvilProcess:
    """Start anvil for `chain_id`; with `state_path`, the chain survives restarts like the
    database does."""
    extra = ("--state-interval", str(STATE_INTERVAL_S)) if state_path is not None else ()
    anvil = AnvilProcess(chain_id=chain_id, state_path=state_path, extra_args=extra)
    await anvil.start_async()
    return anvil


async def check_chain_id(adapter: EvmAdapter) -> None:
    with translated("read chain id"):
        actual = int(await adapter._w3.eth.chain_id)
    if actual != adapter.chain_id:
        raise ChainError(
            f"{adapter.rpc_url} is chain {actual}, the registry says {adapter.network.name} is "
            f"{adapter.chain_id}",
            code="wrong_chain",
        )


async def identify_chain(adapter: EvmAdapter) -> tuple[str, str]:
    """(instance id, where the chain lives) of the local chain behind `adapter`: the id is
    the mark stored on the chain (64 hex digits), written now if the chain has none."""
    mark = await _read_mark(adapter)
    if mark is None:
        await adapter._raw_rpc(
            "anvil_setStorageAt",
            [INSTANCE_MARK_ADDRESS, INSTANCE_MARK_SLOT, "0x" + secrets.token_bytes(32).hex()],
        )
        mark = await _read_mark(adapter)
        if mark is None:
            raise ChainError(
                f"{adapter.network.name}: the node did not keep zpay's instance mark",
                code="local_setup_failed",
            )
        log.info("%s: new chain, instance %s", adapter.network.name, mark)
    return mark, _location(adapter)


async def _read_mark(adapter: EvmAdapter) -> str | None:
    stored = await adapter._raw_rpc(
        "eth_getStorageAt", [INSTANCE_MARK_ADDRESS, INSTANCE_MARK_SLOT, "latest"]
    )
    value = int(str(stored), 16)
    return None if value == 0 else f"{value:064x}"


def _location(adapter: EvmAdapter) -> str:
    anvil = adapter._anvil
    if anvil is None:
        return f"the node at {redact_url(adapter.rpc_url)}"
    if anvil.state_path is None:
        return "an embedded anvil without a state directory"
    return f"the chain state directory {anvil.state_path.parent}"


async def fund_relayer(adapter: EvmAdapter) -> None:
    if await adapter.relayer_balance_wei() < adapter._options.relayer_min_balance_wei:
        await adapter._raw_rpc(
            "anvil_setBalance",
            [adapter._relayer.address, evm_tx.quantity(adapter._options.relayer_min_balance_wei)],
        )


async def deploy_test_tokens(adapter: EvmAdapter) -> None:
    """Deploy ZpayTestUSD for each token without an address. The i-th such token is the
    relayer's i-th transaction ever, so its address is a pure function of the relayer
    key: a restarted zpay (anvil state kept) finds the same contract again."""
    missing = sorted(s for s, t in adapter._tokens.items() if not t.address)
    if not missing:
        return
    artifact = load_test_token_artifact()
    for index, symbol in enumerate(missing):
        token = adapter._tokens[symbol]
        expected = evm_tx.contract_address(adapter._relayer.address, index)
        with translated("read code"):
            code = bytes(await adapter._w3.eth.get_code(cast(Any, expected)))
        if not code:
            if await adapter._relayer.chain_nonce("pending") != index:
                raise ChainError(
                    f"cannot deploy {symbol}: the relayer {adapter._relayer.address} already "
                    "has unrelated transactions on this chain; use a fresh relayer key",
                    code="local_setup_failed",
                )
            bytecode = bytes.fromhex(str(artifact["bytecode"]).removeprefix("0x"))
            data = bytecode + evm_tx.encode_constructor_args(
                token.eip712_name or symbol, symbol, token.eip712_version or "1"
            )
            with translated("estimate deploy gas"):
                gas = int(
                    await adapter._w3.eth.estimate_gas(
                        cast(Any, {"from": adapter._relayer.address, "data": to_hex(data)})
                    )
                )
            sent = await adapter._relayer.send(
                to=None, data=data, gas=with_headroom(gas, adapter._options.gas_headroom_percent)
            )
            receipt = await adapter._wait_receipt(sent.tx_hash, relayer=True)
            if receipt["status"] != 1 or not evm_tx.same_address(
                str(receipt["contractAddress"]), expected
            ):
                raise ChainError(f"deploying {symbol} failed", code="local_setup_failed")
            log.info("deployed %s test token at %s", symbol, expected)
        adapter._tokens[symbol] = replace(token, address=expected)


def load_or_create_key(path: Path) -> bytes:
    if path.exists():
        return decode_key(path.read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = evm_tx.new_private_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("0x" + secret.hex() + "\n")
    return secret


def load_test_token_artifact() -> dict[str, Any]:
    """The committed build of chains/evm/contracts/ZpayTestUSD.sol (abi + bytecode)."""
    path = chains_data_dir() / "evm" / "artifacts" / "ZpayTestUSD.json"
    artifact: dict[str, Any] = json.loads(path.read_text())
    return artifact
