"""x402: pay a resource server's 402 from a session key (services.x402)."""

from __future__ import annotations

from litestar import Controller, Response, get, post

from zpay.api.controllers import IdempotencyKey, Json, json_response
from zpay.services import idempotency, x402
from zpay.services.auth import Principal
from zpay.services.context import AppContext


class X402Controller(Controller):
    path = "/v1/x402/payments"
    tags = ["x402"]

    @post()
    async def create(
        self, data: x402.X402PaymentRequest, ctx: AppContext, principal: Principal,
        idempotency_key: IdempotencyKey = None,
    ) -> Response[Json]:
        """Both layers, the hold, then the signed header to send (`header_name`,
        `header_value`). A replay of the same Idempotency-Key answers the same payment."""
        key = idempotency.validate_key(idempotency_key)
        status, body = await x402.create_x402_payment(ctx, principal, data, key)
        return json_response(status, body, replayed=status == 200)

    @get("/{payment_id:str}")
    async def get_(self, payment_id: str, ctx: AppContext, principal: Principal) -> Json:
        return await x402.get_x402_payment(ctx, principal, payment_id)

    @post("/{payment_id:str}/settlement")
    async def settlement(self, payment_id: str, data: x402.X402SettlementReport,
                         ctx: AppContext, principal: Principal) -> Response[Json]:
        """The PAYMENT-RESPONSE the agent got: zpay checks the chain; 200 once final."""
        status, body = await x402.report_settlement(ctx, principal, payment_id, data)
        return json_response(status, body)
