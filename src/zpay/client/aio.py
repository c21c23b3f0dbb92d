"""The asynchronous client: `AsyncZpay`, the mirror of `sync.Zpay` (same names, awaited)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Generic, TypeVar

import httpx

from zpay.client._core import (
    DEFAULT_BACKOFF_S,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT_S,
    PAYMENT_FINAL,
    REFUND_FINAL,
    UNSET,
    Amount,
    Call,
    Ops,
    PageCall,
    RetryPolicy,
    SessionLimits,
    Signed,
    connection_error,
    headers_for,
    result,
    settings_from_env,
)
from zpay.client.errors import Conflict, WaitTimeout
from zpay.client.types import (
    Affordability,
    Agent,
    ApiKey,
    Approval,
    Event,
    FaucetDrip,
    ListPage,
    Payment,
    PaymentAttempt,
    PolicySession,
    SessionKey,
    WebhookDelivery,
    WebhookEndpoint,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from zpay.client.wallet import ApprovalSigner

T = TypeVar("T")
StrList = list[str]  # `list` is a method name in the resource classes below


class AsyncPager(Generic[T]):
    """A paginated list: `async for` it for every item (pages are fetched as needed,
    following `next_cursor`), or walk `pages()`."""

    def __init__(self, send: Callable[[Call[ListPage[T]]], Awaitable[ListPage[T]]],
                 build: PageCall[T]) -> None:
        self._send, self._build = send, build

    async def pages(self) -> AsyncIterator[ListPage[T]]:
        cursor: str | None = None
        while True:
            page = await self._send(self._build(cursor))
            yield page
            if not page.has_more or not page.next_cursor:
                return
            cursor = page.next_cursor

    async def __aiter__(self) -> AsyncIterator[T]:
        async for page in self.pages():
            for item in page.data:
                yield item

    async def first_page(self) -> ListPage[T]:
        return await self._send(self._build(None))

    async def to_list(self) -> list[T]:
        return [item async for item in self]


class _Resource:
    def __init__(self, client: AsyncZpay) -> None:
        self._c = client

    def _pager(self, build: PageCall[T]) -> AsyncPager[T]:
        return AsyncPager(self._c._send, build)


class Agents(_Resource):
    async def create(self, name: str, *, expires_in_seconds: int | None = None) -> Agent:
        """The agent and its token (in `.token`, shown once); with `expires_in_seconds`
        the token stops working after that long (60 s to a year)."""
        return await self._c._send(Ops.create_agent(name, expires_in_seconds))

    async def get(self, agent_id: str) -> Agent:
        return await self._c._send(Ops.get_agent(agent_id))

    def list(self, *, limit: int | None = None) -> AsyncPager[Agent]:
        return self._pager(Ops.list_agents(limit))

    async def rotate_token(self, agent_id: str, *,
                           expires_in_seconds: int | None = None) -> Agent:
        """A new token in `.token`; the old one stops working at once."""
        return await self._c._send(Ops.rotate_agent_token(agent_id, expires_in_seconds))

    async def freeze(self, agent_id: str) -> Agent:
        return await self._c._send(Ops.freeze_agent(agent_id, True))

    async def unfreeze(self, agent_id: str) -> Agent:
        return await self._c._send(Ops.freeze_agent(agent_id, False))

    async def delete(self, agent_id: str) -> Agent:
        return await self._c._send(Ops.delete_agent(agent_id))

    async def create_session(self, agent_id: str,
                             **limits: Unpack[SessionLimits]) -> PolicySession:
        """A policy session for this agent; same keywords as `sessions.create`."""
        return await self._c.sessions.create(agent_id, **limits)


class ApiKeys(_Resource):
    """The merchant's secret keys (needs a merchant key)."""

    async def create(self, *, name: str | None = None) -> ApiKey:
        """A new key; its secret is in `.secret`, shown once."""
        return await self._c._send(Ops.create_api_key(name))

    async def get(self, key_id: str) -> ApiKey:
        return await self._c._send(Ops.get_api_key(key_id))

    def list(self, *, limit: int | None = None) -> AsyncPager[ApiKey]:
        return self._pager(Ops.list_api_keys(limit))

    async def revoke(self, key_id: str) -> ApiKey:
        """Refused from the next call on. The last usable key cannot be revoked."""
        return await self._c._send(Ops.revoke_api_key(key_id))

    async def roll(self, key_id: str, *, overlap_seconds: int | None = None) -> ApiKey:
        """A new key (`.secret`, shown once); the old one keeps working for
        `overlap_seconds` (default a day, at most a week; 0: revoked now)."""
        return await self._c._send(Ops.roll_api_key(key_id, overlap_seconds))


class Sessions(_Resource):
    async def create(self, agent_id: str, *, user_wallet: str | None = None,
                     token: str | None = None, max_per_transaction: Amount | None = None,
                     max_per_day: Amount | None = None, max_per_week: Amount | None = None,
                     max_per_month: Amount | None = None, max_total: Amount | None = None,
                     allowed_recipients: list[str] | None = None,
                     allowed_chains: list[str] | None = None,
                     allowed_methods: list[str] | None = None,
                     active_hours: list[int] | None = None, window_mode: str | None = None,
                     timezone: str | None = None, expires_at: datetime | None = None,
                     expires_in_seconds: int | None = None) -> PolicySession:
        """Limits bound to an agent. Its `as_` token is in `.access_token`, shown once."""
        return await self._c._send(Ops.create_session(
            agent_id, user_wallet=user_wallet, token=token,
            max_per_transaction=max_per_transaction, max_per_day=max_per_day,
            max_per_week=max_per_week, max_per_month=max_per_month, max_total=max_total,
            allowed_recipients=allowed_recipients, allowed_chains=allowed_chains,
            allowed_methods=allowed_methods, active_hours=active_hours, window_mode=window_mode,
            timezone=timezone, expires_at=expires_at, expires_in_seconds=expires_in_seconds))

    async def get(self, session_id: str) -> PolicySession:
        return await self._c._send(Ops.get_session(session_id))

    def list(self, *, agent_id: str | None = None,
             limit: int | None = None) -> AsyncPager[PolicySession]:
        return self._pager(Ops.list_sessions(agent_id, limit))

    async def revoke(self, session_id: str) -> PolicySession:
        return await self._c._send(Ops.revoke_session(session_id))


class SessionKeys(_Resource):
    async def create(self, agent_id: str, user_wallet: str, max_amount: Amount, *,
                     expires_in_seconds: int | None = None, expires_at: datetime | None = None,
                     chain: str | None = None, token: str | None = None,
                     session_id: str | None = None, refund_on_close: bool | None = None,
                     approval_method: str | None = None) -> SessionKey:
        """A pending key; `.approval` (and `.raw`) hold what the user's wallet must sign."""
        return await self._c._send(Ops.create_session_key(
            agent_id, user_wallet, max_amount, expires_in_seconds=expires_in_seconds,
            expires_at=expires_at, chain=chain, token=token, session_id=session_id,
            refund_on_close=refund_on_close, approval_method=approval_method))

    async def submit_approval(self, key_id: str, signed: Signed) -> SessionKey:
        """Submit the user's signed approval; returns once the funding is confirmed."""
        return await self._c._send(Ops.submit_approval(key_id, signed))

    async def approve(self, key_id: str, wallet: ApprovalSigner) -> SessionKey:
        """Sign the pending funding approval with a local wallet and submit it."""
        key = await self.get_status(key_id)
        if key.approval is None:
            raise Conflict(f"session key {key_id} is {key.status}; nothing to approve",
                           code="nothing_to_approve")
        return await self.submit_approval(key_id, wallet.sign_approval(key))

    async def renew_approval(self, key_id: str) -> Approval:
        """A fresh funding approval (e.g. after `approval_expired`); the old one is void."""
        return await self._c._send(Ops.renew_approval(key_id))

    async def get_status(self, key_id: str) -> SessionKey:
        return await self._c._send(Ops.get_session_key(key_id))

    def list(self, *, status: str | None = None, agent_id: str | None = None,
             limit: int | None = None) -> AsyncPager[SessionKey]:
        return self._pager(Ops.list_session_keys(status, agent_id, limit))

    async def top_up(self, key_id: str, amount: Amount, *,
                     approval_method: str | None = None) -> Approval:
        """An approval for `amount` more; the user signs it, then `submit_top_up`."""
        return await self._c._send(Ops.top_up(key_id, amount, approval_method))

    async def submit_top_up(self, key_id: str, top_up_id: str, signed: Signed) -> SessionKey:
        return await self._c._send(Ops.submit_top_up(key_id, top_up_id, signed))

    async def renew_top_up(self, key_id: str, top_up_id: str) -> Approval:
        return await self._c._send(Ops.renew_top_up(key_id, top_up_id))

    async def revoke(self, key_id: str) -> SessionKey:
        return await self._c._send(Ops.revoke_session_key(key_id))

    async def link_session(self, key_id: str, session_id: str) -> SessionKey:
        return await self._c._send(Ops.link_session(key_id, session_id))

    async def unlink_session(self, key_id: str) -> SessionKey:
        return await self._c._send(Ops.unlink_session(key_id))

    async def can_afford(self, key_id: str, amount: Amount, *,
                         recipient: str | None = None) -> Affordability:
        return await self._c._send(Ops.can_afford(key_id, amount, recipient))

    def attempts(self, key_id: str, *, limit: int | None = None) -> AsyncPager[PaymentAttempt]:
        """The audit log: every authorization, allowed or refused, with its reason."""
        return self._pager(Ops.list_attempts(key_id, limit))

    async def wait_for_refund(self, key_id: str, *, timeout_s: float = 60.0,
                              poll_s: float = 0.5) -> SessionKey:
        """Poll a closed key until its refund is done (or skipped: nothing to return)."""
        deadline = time.monotonic() + timeout_s
        while True:
            key = await self.get_status(key_id)
            if key.refund_status in REFUND_FINAL:
                return key
            if time.monotonic() >= deadline:
                raise WaitTimeout(f"refund of {key_id} is {key.refund_status!r} after "
                                  f"{timeout_s:g}s", code="wait_timeout")
            await asyncio.sleep(poll_s)


class Payments(_Resource):
    async def create(self, session_key_id: str, amount: Amount, recipient: str, *,
                     description: str | None = None, idempotency_key: str | None = None) -> Payment:
        """Pay from a session key. Without `idempotency_key` one is generated and reused by
        this call's retries, so a retry never pays twice. A refusal raises `PaymentRefused`
        with the reason in `.code`; a payment that ended `failed` raises `PaymentFailed`
        (a `PaymentRefused`) with its `failure_code` in `.code` and the payment in
        `.payment`."""
        return await self._c._send(Ops.create_payment(session_key_id, amount, recipient,
                                                description=description,
                                                idempotency_key=idempotency_key))

    async def get(self, payment_id: str) -> Payment:
        return await self._c._send(Ops.get_payment(payment_id))

    def list(self, *, session_key_id: str | None = None,
             limit: int | None = None) -> AsyncPager[Payment]:
        return self._pager(Ops.list_payments(session_key_id, limit))

    async def wait(self, payment_id: str, *, timeout_s: float = 60.0,
                   poll_s: float = 0.5) -> Payment:
        """Poll a `submitted` payment until it succeeded or failed."""
        deadline = time.monotonic() + timeout_s
        while True:
            payment = await self.get(payment_id)
            if payment.status in PAYMENT_FINAL:
                return payment
            if time.monotonic() >= deadline:
                raise WaitTimeout(f"payment {payment_id} is still {payment.status} after "
                                  f"{timeout_s:g}s", code="wait_timeout")
            await asyncio.sleep(poll_s)


class Webhooks(_Resource):
    async def create(self, url: str, *, event_types: list[str] | None = None,
                     description: str | None = None, enabled: bool = True) -> WebhookEndpoint:
        """A webhook endpoint; its signing secret is in `.secret`, shown once."""
        return await self._c._send(Ops.create_endpoint(url, event_types=event_types,
                                                 description=description, enabled=enabled))

    def list(self, *, limit: int | None = None) -> AsyncPager[WebhookEndpoint]:
        return self._pager(Ops.list_endpoints(limit))

    async def get(self, endpoint_id: str) -> WebhookEndpoint:
        return await self._c._send(Ops.get_endpoint(endpoint_id))

    async def update(self, endpoint_id: str, *, url: str = UNSET, description: str | None = UNSET,
                     event_types: StrList | None = UNSET,
                     enabled: bool = UNSET) -> WebhookEndpoint:
        """Change only what is passed; `event_types=None` means every event type."""
        return await self._c._send(Ops.update_endpoint(
            endpoint_id, url=url, description=description, event_types=event_types,
            enabled=enabled))

    async def delete(self, endpoint_id: str) -> WebhookEndpoint:
        return await self._c._send(Ops.delete_endpoint(endpoint_id))

    def deliveries(self, endpoint_id: str, *, status: str | None = None,
                   limit: int | None = None) -> AsyncPager[WebhookDelivery]:
        return self._pager(Ops.list_deliveries(endpoint_id, status, limit))

    async def get_delivery(self, delivery_id: str) -> WebhookDelivery:
        return await self._c._send(Ops.get_delivery(delivery_id))

    async def redeliver(self, delivery_id: str) -> WebhookDelivery:
        return await self._c._send(Ops.redeliver(delivery_id))


class Events(_Resource):
    def list(self, *, type: str | None = None, object_id: str | None = None,
             limit: int | None = None) -> AsyncPager[Event]:
        return self._pager(Ops.list_events(type, object_id, limit))


class Faucet(_Resource):
    async def drip(self, wallet: str, amount: Amount, *, chain: str | None = None,
                   token: str | None = None) -> FaucetDrip:
        """Test tokens for a wallet; local networks only."""
        return await self._c._send(Ops.drip(wallet, amount, chain=chain, token=token))


class AsyncZpay:
    """Asynchronous zpay client (the same API as `Zpay`, awaited).

    `api_key` is a merchant secret key (`sk_…`), an agent token (`agent_…`) or a policy
    session token (`as_…`); it defaults to `ZPAY_API_KEY`, and `base_url` to `ZPAY_URL`
    (then http://127.0.0.1:8000). Network errors and 503s are retried with backoff.
    """

    def __init__(self, api_key: str | None = None, *, base_url: str | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, max_retries: int = DEFAULT_MAX_RETRIES,
                 retry_backoff_s: float = DEFAULT_BACKOFF_S,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.api_key, self.base_url = settings_from_env(api_key, base_url)
        self._retry = RetryPolicy(max_retries=max_retries, backoff_s=retry_backoff_s)
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout_s,
                                  transport=transport)
        self._owns_http = True
        self._init_resources()

    def _init_resources(self) -> None:
        self.agents = Agents(self)
        self.api_keys = ApiKeys(self)
        self.sessions = Sessions(self)
        self.session_keys = SessionKeys(self)
        self.payments = Payments(self)
        self.webhooks = Webhooks(self)
        self.events = Events(self)
        self.faucet = Faucet(self)

    def with_token(self, token: str) -> AsyncZpay:
        """The same connection pool, acting as someone else (e.g. an agent's token).
        Closing it leaves the pool open; closing this client closes both."""
        other = object.__new__(AsyncZpay)
        other.api_key, other.base_url = token, self.base_url
        other._retry, other._http, other._owns_http = self._retry, self._http, False
        other._init_resources()
        return other

    async def health(self) -> bool:
        return await self._send(Ops.health())

    async def _send(self, call: Call[T]) -> T:
        headers = {**headers_for(self.api_key), **call.headers}
        attempt = 0
        while True:
            try:
                response = await self._http.request(call.method, call.path, json=call.json,
                                              params=call.params, headers=headers)
            except httpx.TransportError as exc:
                if not self._retry.retry_exception(call, exc, attempt):
                    raise connection_error(call, exc) from exc
                await asyncio.sleep(self._retry.delay_s(attempt))
                attempt += 1
                continue
            if self._retry.retry_response(call, response, attempt):
                retry_after = response.headers.get("Retry-After")
                await asyncio.sleep(self._retry.delay_s(attempt, retry_after))
                attempt += 1
                continue
            return result(call, response)

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncZpay:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()
