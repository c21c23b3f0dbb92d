"""Controllers: parse, call one service, answer. No business rules here."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Response, delete, get, post
from litestar.params import HeaderParameter

from zpay.api.errors import PROBLEM, failed_payment_problem, problem_for
from zpay.api.schemas import (
    AgentCreate,
    AgentTokenRotate,
    ApprovalSubmit,
    FaucetRequest,
    LinkRequest,
    TopUpCreate,
)
from zpay.services import (
    agents,
    approvals,
    faucet,
    idempotency,
    payments,
    session_keys,
    sessions,
)
from zpay.services.auth import Principal
from zpay.services.context import AppContext
from zpay.services.pagination import Page

Json = dict[str, Any]
IdempotencyKey = Annotated[str | None, HeaderParameter(name="Idempotency-Key")]


class AgentController(Controller):
    path = "/v1/agents"
    tags = ["agents"]

    @post()
    async def create(self, data: AgentCreate, ctx: AppContext, principal: Principal) -> Json:
        return await agents.create_agent(ctx, principal, data.name, data.expires_in_seconds)

    @get()
    async def list_(self, ctx: AppContext, principal: Principal, page: Page) -> Json:
        return await agents.list_agents(ctx, principal, page)

    @get("/{agent_id:str}")
    async def get_(self, agent_id: str, ctx: AppContext, principal: Principal) -> Json:
        return await agents.get_agent(ctx, principal, agent_id)

    @post("/{agent_id:str}/rotate-token", status_code=200)
    async def rotate(self, agent_id: str, ctx: AppContext, principal: Principal,
                     data: AgentTokenRotate | None = None) -> Json:
        return await agents.rotate_token(ctx, principal, agent_id,
                                         data.expires_in_seconds if data else None)

    @post("/{agent_id:str}/freeze", status_code=200)
    async def freeze(self, agent_id: str, ctx: AppContext, principal: Principal) -> Json:
        return await agents.set_frozen(ctx, principal, agent_id, True)

    @post("/{agent_id:str}/unfreeze", status_code=200)
    async def unfreeze(self, agent_id: str, ctx: AppContext, principal: Principal) -> Json:
        return await agents.set_frozen(ctx, principal, agent_id, False)

    @delete("/{agent_id:str}", status_code=200)
    async def delete_(self, agent_id: str, ctx: AppContext, principal: Principal) -> Json:
        return await agents.delete_agent(ctx, principal, agent_id)


class SessionController(Controller):
    path = "/v1/sessions"
    tags = ["sessions"]

    @post()
    async def create(self, data: sessions.SessionRequest, ctx: AppContext,
                     principal: Principal) -> Json:
        return await sessions.create_session(ctx, principal, data)

    @get()
    async def list_(self, ctx: AppContext, principal: Principal, page: Page,
                    agent_id: str | None = None) -> Json:
        return await sessions.list_sessions(ctx, principal, page, agent_id)

    @get("/{session_id:str}")
    async def get_(self, session_id: str, ctx: AppContext, principal: Principal) -> Json:
        return await sessions.get_session(ctx, principal, session_id)

    @post("/{session_id:str}/revoke", status_code=200)
    async def revoke(self, session_id: str, ctx: AppContext, principal: Principal) -> Json:
        return await sessions.revoke_session(ctx, principal, session_id)


class SessionKeyController(Controller):
    path = "/v1/session-keys"
    tags = ["session keys"]

    @post()
    async def create(self, data: session_keys.SessionKeyRequest, ctx: AppContext,
                     principal: Principal) -> Json:
        return await session_keys.create_session_key(ctx, principal, data)

    @get()
    async def list_(self, ctx: AppContext, principal: Principal, page: Page,
                    status: str | None = None, agent_id: str | None = None) -> Json:
        return await session_keys.list_session_keys(ctx, principal, page, status, agent_id)

    @get("/{key_id:str}")
    async def status(self, key_id: str, ctx: AppContext, principal: Principal) -> Json:
        return await session_keys.get_status(ctx, principal, key_id)

    @post("/{key_id:str}/approval", status_code=200)
    async def submit_approval(self, key_id: str, data: ApprovalSubmit, ctx: AppContext,
                              principal: Principal) -> Json:
        return await approvals.submit_approval(ctx, principal, key_id, data.signed())

    @post("/{key_id:str}/approval/renew", status_code=201)
    async def renew_approval(self, key_id: str, ctx: AppContext, principal: Principal) -> Json:
        return await approvals.renew_approval(ctx, principal, key_id)

    @post("/{key_id:str}/top-ups")
    async def top_up(self, key_id: str, data: TopUpCreate, ctx: AppContext,
                     principal: Principal) -> Json:
        return await approvals.create_top_up(ctx, principal, key_id, data.amount,
                                                data.approval_method)

    @post("/{key_id:str}/top-ups/{top_up_id:str}/approval", status_code=200)
    async def submit_top_up(self, key_id: str, top_up_id: str, data: ApprovalSubmit,
                            ctx: AppContext, principal: Principal) -> Json:
        return await approvals.submit_approval(ctx, principal, key_id, data.signed(),
                                                  approval_id=top_up_id, kind="top_up")

    @post("/{key_id:str}/top-ups/{top_up_id:str}/renew", status_code=201)
    async def renew_top_up(self, key_id: str, top_up_id: str, ctx: AppContext,
                           principal: Principal) -> Json:
        return await approvals.renew_approval(ctx, principal, key_id, top_up_id, "top_up")

    @post("/{key_id:str}/revoke", status_code=200)
    async def revoke(self, key_id: str, ctx: AppContext, principal: Principal) -> Json:
        return await session_keys.revoke(ctx, principal, key_id)

    @post("/{key_id:str}/link", status_code=200)
    async def link(self, key_id: str, data: LinkRequest, ctx: AppContext,
                   principal: Principal) -> Json:
        return await session_keys.link(ctx, principal, key_id, data.session_id)

    @delete("/{key_id:str}/link", status_code=200)
    async def unlink(self, key_id: str, ctx: AppContext, principal: Principal) -> Json:
        return await session_keys.unlink(ctx, principal, key_id)

    @get("/{key_id:str}/can-afford")
    async def can_afford(self, key_id: str, ctx: AppContext, principal: Principal,
                         amount: str, recipient: str | None = None) -> Json:
        return await session_keys.can_afford(ctx, principal, key_id, amount, recipient)

    @get("/{key_id:str}/attempts")
    async def attempts(self, key_id: str, ctx: AppContext, principal: Principal,
                       page: Page) -> Json:
        return await session_keys.list_attempts(ctx, principal, key_id, page)


class PaymentController(Controller):
    path = "/v1/payments"
    tags = ["payments"]

    @post()
    async def create(
        self, data: payments.PaymentRequest, ctx: AppContext, principal: Principal,
        idempotency_key: IdempotencyKey = None,
    ) -> Response[Json]:
        key = idempotency.validate_key(idempotency_key)
        outcome = await payments.create_payment(ctx, principal, data, key)
        if outcome.error is not None:
            status, body = problem_for(outcome.error)
            return json_response(status, body, replayed=outcome.replayed)
        if outcome.body.get("status") == "failed":  # never a 2xx for money that did not move
            return json_response(*failed_payment_problem(outcome.body), replayed=outcome.replayed)
        return json_response(outcome.status_code, outcome.body, replayed=outcome.replayed)

    @get()
    async def list_(self, ctx: AppContext, principal: Principal, page: Page,
                    session_key_id: str | None = None) -> Json:
        return await payments.list_payments(ctx, principal, page, session_key_id)

    @get("/{payment_id:str}")
    async def get_(self, payment_id: str, ctx: AppContext, principal: Principal) -> Json:
        return await payments.get_payment(ctx, principal, payment_id)


def json_response(status: int, body: Json, *, replayed: bool = False) -> Response[Json]:
    """A JSON answer (problem+json from 400 on); `replayed` marks an idempotent replay."""
    headers = {"Idempotent-Replayed": "true"} if replayed else {}
    media = PROBLEM if status >= 400 else "application/json"
    return Response(body, status_code=status, media_type=media, headers=headers)


class FaucetController(Controller):
    path = "/v1/faucet"
    tags = ["local development"]

    @post()
    async def drip(self, data: FaucetRequest, ctx: AppContext, principal: Principal) -> Json:
        return await faucet.drip(ctx, principal, data.wallet, data.amount, data.chain, data.token)


@get("/health", tags=["ops"])
async def health() -> Json:
    return {"status": "ok"}
