"""A small Solana JSON-RPC server over LiteSVM, so the RPC backend (solana-py's AsyncClient,
the production path) can be tested without a validator.

It serves exactly the methods `zpay.chains.solana.RpcBackend` uses (including the test
validator's `requestAirdrop`, paid from the LiteSVM chain's own fee payer), with the response
shapes of a real node (built with solders' own response types, so the client parses them
as it parses a validator's). Knobs mimic what a real cluster does that LiteSVM does not:

- `pending_polls`: a landed transaction reports `processed` for that many status polls
  before `confirmed`;
- `drop_next_sends`: accept that many sendTransaction calls without executing them (a
  leader that never included the transaction).
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from solders.hash import Hash
from solders.instruction import Instruction
from solders.message import Message
from solders.pubkey import Pubkey
from solders.rpc.errors import SendTransactionPreflightFailureMessage
from solders.rpc.responses import (
    GetAccountInfoResp,
    GetBlockHeightResp,
    GetGenesisHashResp,
    GetLatestBlockhashResp,
    GetMinimumBalanceForRentExemptionResp,
    GetSignatureStatusesResp,
    IsBlockhashValidResp,
    RequestAirdropResp,
    RpcBlockhash,
    RpcResponseContext,
    RpcSimulateTransactionResult,
    SendTransactionResp,
)
from solders.signature import Signature
from solders.system_program import TransferParams, transfer
from solders.transaction import Transaction
from solders.transaction_status import (
    TransactionConfirmationStatus,
    TransactionErrorFieldless,
    TransactionStatus,
)

from zpay.chains.protocol import TransferState
from zpay.chains.solana import TxRejected
from zpay.chains.solana_local import LocalChain
from zpay.chains.solana_tx import MEMO_PROGRAM_ID, Refusal

# A real node hands out blockhashes valid for 150 more blocks.
_BLOCKHASH_WINDOW = 150
# Default rent: 3480 lamports per byte-year, exempt at two years; 128 bytes of overhead.
_RENT_LAMPORTS_PER_BYTE = 3480 * 2
_ACCOUNT_OVERHEAD_BYTES = 128


class FakeSolanaRpc:
    def __init__(self, chain: LocalChain) -> None:
        self.chain = chain
        self.pending_polls = 0
        self.drop_next_sends = 0
        self.calls: list[str] = []
        self._polls_left: dict[Signature, int] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @contextmanager
    def running(self) -> Iterator[FakeSolanaRpc]:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)

    # ---------------------------------------------------------------- JSON-RPC

    def dispatch(self, request: dict[str, Any]) -> str:
        method = str(request.get("method"))
        params = request.get("params") or []
        request_id = request.get("id", 0)
        with self._lock:
            self.calls.append(method)
        handler: Callable[[list[Any]], str] | None = getattr(self, f"_rpc_{method}", None)
        if handler is None:
            return _error(request_id, -32601, "Method not found")
        body = json.loads(handler(params))
        body["id"] = request_id
        return json.dumps(body)

    def _context(self) -> RpcResponseContext:
        return RpcResponseContext(slot=self.chain.latest_blockhash().last_valid_block_height)

    def _rpc_getLatestBlockhash(self, params: list[Any]) -> str:
        recent = self.chain.latest_blockhash()
        value = RpcBlockhash(recent.blockhash, recent.last_valid_block_height + _BLOCKHASH_WINDOW)
        return GetLatestBlockhashResp(value, self._context()).to_json()

    def _rpc_isBlockhashValid(self, params: list[Any]) -> str:
        valid = self.chain.is_blockhash_valid(Hash.from_string(params[0]))
        # solders' stub omits `context`, which the runtime requires.
        return IsBlockhashValidResp(valid, self._context()).to_json()  # type: ignore[call-arg]

    def _rpc_getBlockHeight(self, params: list[Any]) -> str:
        return GetBlockHeightResp(self.chain.latest_blockhash().last_valid_block_height).to_json()

    def _rpc_getGenesisHash(self, params: list[Any]) -> str:
        return GetGenesisHashResp(Hash.hash(self.chain.instance_id.encode())).to_json()

    def _rpc_getAccountInfo(self, params: list[Any]) -> str:
        account = self.chain.get_account(Pubkey.from_string(params[0]))
        return GetAccountInfoResp(account, self._context()).to_json()

    def _rpc_getSignatureStatuses(self, params: list[Any]) -> str:
        statuses: list[TransactionStatus | None] = []
        for text in params[0]:
            signature = Signature.from_string(text)
            status = self.chain.signature_status(signature)
            if status.state is TransferState.UNKNOWN:
                statuses.append(None)
                continue
            with self._lock:
                left = self._polls_left.get(signature, 0)
                self._polls_left[signature] = max(left - 1, 0)
            level = (
                TransactionConfirmationStatus.Processed
                if left > 0
                else TransactionConfirmationStatus.Confirmed
            )
            # The failure text is all the adapter reports; any InstructionError stands in.
            err = None if status.state is TransferState.CONFIRMED else _GENERIC_FAILURE
            statuses.append(TransactionStatus(1, 0, err, err, level))
        return GetSignatureStatusesResp(statuses, self._context()).to_json()

    def _rpc_getMinimumBalanceForRentExemption(self, params: list[Any]) -> str:
        size = int(params[0])
        lamports = (size + _ACCOUNT_OVERHEAD_BYTES) * _RENT_LAMPORTS_PER_BYTE
        return GetMinimumBalanceForRentExemptionResp(lamports).to_json()

    def _rpc_requestAirdrop(self, params: list[Any]) -> str:
        """A test validator's faucet: a transfer from the chain's fee payer (with a memo, so
        two equal airdrops are two transactions)."""
        to, lamports = Pubkey.from_string(params[0]), int(params[1])
        payer = self.chain.fee_payer
        blockhash = self.chain.latest_blockhash().blockhash
        instructions = [
            transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=to, lamports=lamports)),
            Instruction(MEMO_PROGRAM_ID, f"airdrop {uuid.uuid4().hex}".encode(), []),
        ]
        message = Message.new_with_blockhash(instructions, payer.pubkey(), blockhash)
        transaction = Transaction([payer], message, blockhash)
        try:
            self.chain.process(transaction)
        except TxRejected as exc:
            return _error(0, -32600, f"airdrop failed: {exc}")
        signature = transaction.signatures[0]
        with self._lock:
            self._polls_left[signature] = self.pending_polls
        return RequestAirdropResp(signature).to_json()

    def _rpc_sendTransaction(self, params: list[Any]) -> str:
        config = params[1] if len(params) > 1 else {}
        if config.get("encoding") != "base64":
            return _error(0, -32602, "this fake node only accepts base64 transactions")
        raw = base64.b64decode(params[0])
        transaction = Transaction.from_bytes(raw)
        signature = transaction.signatures[0]
        with self._lock:
            if self.drop_next_sends > 0:
                self.drop_next_sends -= 1
                return SendTransactionResp(signature).to_json()
        try:
            self.chain.process(transaction)
        except TxRejected as exc:
            if exc.refusal is Refusal.SIGNATURE_INVALID:
                return _error(0, -32003, "Transaction signature verification failure")
            failure = SendTransactionPreflightFailureMessage(
                f"Transaction simulation failed: {exc}",
                RpcSimulateTransactionResult(err=exc.err, logs=[]),
            )
            return json.dumps(
                {"jsonrpc": "2.0", "error": {"code": -32002, **json.loads(failure.to_json())}}
            )
        with self._lock:
            self._polls_left[signature] = self.pending_polls
        return SendTransactionResp(signature).to_json()


_GENERIC_FAILURE = TransactionErrorFieldless.InvalidAccountForFee


def _error(request_id: Any, code: int, message: str) -> str:
    return json.dumps(
        {"jsonrpc": "2.0", "error": {"code": code, "message": message}, "id": request_id}
    )


def _handler_for(rpc: FakeSolanaRpc) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes; with Nagle on, each answer waits ~40 ms
        # for the client's delayed ACK.
        disable_nagle_algorithm = True

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            request = json.loads(self.rfile.read(length))
            body = rpc.dispatch(request).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean

    return Handler
