"""The x402 REFERENCE implementation as a test fixture: the `x402` package's resource-server
middleware (FastAPI/Starlette ASGI) on a small app, and its facilitator with the EVM
`exact` scheme (`FacilitatorWeb3Signer`, a fresh key funded with ETH on anvil), each
served by uvicorn on a loopback port in a thread of its own (the x402 server fetches the
facilitator's `/supported` with a blocking call, and the facilitator's EVM scheme makes
blocking web3 calls: neither may share an event loop with the test).

    async with x402_resource_server(ctx.chains.get("evm-local"), pay_to=merchant,
                                    amount_base_units=10_000) as url:
        ...  # GET url -> 402 with PAYMENT-REQUIRED; pay it through zpay; GET again -> 200
        url.settlements  # every SettleResponse the facilitator answered

Nothing here is zpay's reading of x402: requirements, verification and settlement are the
package's own code; this module only wires it together.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from eth_account import Account
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from x402 import x402Facilitator, x402ResourceServer
from x402.http import FacilitatorConfig, HTTPFacilitatorClient
from x402.http.middleware.fastapi import PaymentMiddlewareASGI
from x402.mechanisms.evm import FacilitatorWeb3Signer
from x402.mechanisms.evm.exact import ExactEvmServerScheme, register_exact_evm_facilitator
from x402.schemas import PaymentRequirements, SettleResponse, parse_payment_payload

from tests.support import free_port
from zpay.chains.evm import EvmAdapter

RESOURCE_BODY = {"forecast": "sunny", "paid": True}


class ProtectedUrl(str):
    """The protected resource's URL (a str), with what the fixture saw."""

    settlements: list[SettleResponse]
    verifications: list[dict[str, Any]]
    facilitator_address: str
    pay_to: str
    amount_base_units: int
    network: str

    def __new__(cls, url: str) -> ProtectedUrl:
        return super().__new__(cls, url)


@dataclass
class _Threaded:
    """A uvicorn server in a thread with its own event loop."""

    app: Any
    port: int = field(default_factory=free_port)
    server: uvicorn.Server | None = None
    thread: threading.Thread | None = None

    def start(self) -> str:
        self.server = uvicorn.Server(uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True,
                                       name=f"x402-test-{self.port}")
        self.thread.start()
        return f"http://127.0.0.1:{self.port}"

    async def wait_started(self) -> None:
        assert self.server is not None and self.thread is not None
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("an x402 test server failed to start")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        if self.thread is not None:
            await asyncio.to_thread(self.thread.join, 10)


def facilitator_app(facilitator: x402Facilitator, seen: ProtectedUrl, *,
                    settle: bool = True) -> FastAPI:
    """The facilitator's HTTP surface as in x402's own example facilitator
    (examples/python/facilitator/basic/main.py): /verify, /settle, /supported.
    `settle=False`: a facilitator that never settles (answers a failed settlement and
    puts nothing on chain)."""
    app = FastAPI()

    @app.post("/verify")
    async def verify(body: dict[str, Any]) -> dict[str, Any]:
        payload = parse_payment_payload(body["paymentPayload"])
        requirements = PaymentRequirements.model_validate(body["paymentRequirements"])
        response = await facilitator.verify(payload, requirements)  # type: ignore[arg-type]
        answer = response.model_dump(by_alias=True, exclude_none=True)
        seen.verifications.append(answer)
        return answer

    @app.post("/settle")
    async def settle_(body: dict[str, Any]) -> dict[str, Any]:
        payload = parse_payment_payload(body["paymentPayload"])
        requirements = PaymentRequirements.model_validate(body["paymentRequirements"])
        if settle:
            response = await facilitator.settle(payload, requirements)  # type: ignore[arg-type]
        else:
            response = SettleResponse(success=False, error_reason="facilitator_never_settles",
                                      transaction="", network=requirements.network)
        seen.settlements.append(response)
        return response.model_dump(by_alias=True, exclude_none=True)

    @app.get("/supported")
    async def supported() -> dict[str, Any]:
        response = facilitator.get_supported()
        return {"kinds": [k.model_dump(by_alias=True, exclude_none=True)
                          for k in response.kinds],
                "extensions": response.extensions, "signers": response.signers}

    return app


def resource_app(facilitator_url: str, routes: dict[str, Any], network: str) -> FastAPI:
    server = x402ResourceServer(HTTPFacilitatorClient(FacilitatorConfig(url=facilitator_url)))
    server.register(network, ExactEvmServerScheme())  # type: ignore[arg-type]
    app = FastAPI()
    app.add_middleware(PaymentMiddlewareASGI, routes=routes, server=server)

    @app.get("/paid")
    async def paid() -> JSONResponse:
        return JSONResponse(RESOURCE_BODY)

    @app.post("/paid")
    async def paid_post(body: dict[str, Any]) -> JSONResponse:
        return JSONResponse({**RESOURCE_BODY, "echo": body})

    @app.get("/free")
    async def free() -> JSONResponse:
        return JSONResponse({"free": True})

    return app


@asynccontextmanager
async def x402_resource_server(
    adapter: EvmAdapter, *, pay_to: str, amount_base_units: int = 10_000,
    max_timeout_seconds: int = 120, settle: bool = True, token: str = "USDC",
    methods: tuple[str, ...] = ("GET", "POST"),
) -> AsyncIterator[ProtectedUrl]:
    """Serve `GET|POST /paid` behind x402 (`exact`, the adapter's chain and `token`,
    `amount_base_units` to `pay_to`) with x402's facilitator settling on the adapter's
    anvil. Yields the protected URL (`/free` beside it is not protected)."""
    network = f"eip155:{adapter.network.chain_id}"
    usdc = adapter.token(token)
    signer_account = Account.create()
    await adapter.faucet(signer_account.address, adapter.native_token(), 10**18)
    signer = FacilitatorWeb3Signer(private_key=signer_account.key.hex(),
                                   rpc_url=adapter.rpc_url, confirmation_timeout_seconds=30)
    facilitator = x402Facilitator()
    register_exact_evm_facilitator(facilitator, signer, networks=network)

    price = {"amount": str(amount_base_units), "asset": usdc.address,
             "extra": {"name": usdc.eip712_name, "version": usdc.eip712_version}}
    accepts = {"scheme": "exact", "payTo": pay_to, "price": price, "network": network,
               "maxTimeoutSeconds": max_timeout_seconds}
    routes = {f"{method} /paid": {"accepts": accepts, "description": "a paid forecast",
                                  "mimeType": "application/json"} for method in methods}

    fac_server = _Threaded(None)
    res_server = _Threaded(None)
    url = ProtectedUrl(f"http://127.0.0.1:{res_server.port}/paid")
    url.settlements, url.verifications = [], []
    url.facilitator_address, url.pay_to = signer_account.address, pay_to
    url.amount_base_units, url.network = amount_base_units, network
    fac_server.app = facilitator_app(facilitator, url, settle=settle)
    facilitator_url = fac_server.start()
    try:
        await fac_server.wait_started()
        res_server.app = resource_app(facilitator_url, routes, network)
        res_server.start()
        try:
            await res_server.wait_started()
            yield url
        finally:
            await res_server.stop()
    finally:
        await fac_server.stop()
