"""The tools: whoami, can_afford, pay, pay_x402, get_payment, list_payments.

Each tool calls the zpay API with the agent's own credentials (an `AsyncZpay` the
transport hands over per call), so an agent can do over MCP exactly what its token
allows over HTTP: pay, pre-check and read. There is deliberately no tool to revoke,
top up, link, unlink or change limits — an agent cannot raise its own limits.

Results are JSON objects (as `structuredContent` and as the text block); amounts are
decimal strings in token units. A refusal is a tool error (`isError: true`) whose
object carries zpay's reason `code`, its `message`, and under `left` what the key and
its policy still allow.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

import httpx
from mcp.server.mcpserver import MCPServer
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic import Field

from zpay.client import AsyncZpay, PaymentRefused, SessionKey, WaitTimeout, ZpayError

TOOL_NAMES: Final = ("whoami", "can_afford", "pay", "pay_x402", "get_payment", "list_payments")
MAX_KEYS: Final = 100  # whoami lists at most this many keys (newest first)
BODY_CHARS_MAX: Final = 20_000  # pay_x402 returns at most this much of the resource's body

INSTRUCTIONS = """\
zpay lets you pay from session keys: prepaid wallets a user funded for you, each with a
balance and optionally a policy (per-transaction, per-day/week/month and total limits,
allowed recipients). Call `whoami` first to see your keys, what each can still spend
and until when. Use `can_afford` to check a payment without making it, `pay` to pay a
recipient, and `pay_x402` to fetch a URL that may answer 402 Payment Required (zpay pays
it, within the maximum you state). Amounts are decimal strings in token units, e.g.
"12.50" USDC. A refused payment comes back as an error with a `code` (e.g.
`daily_limit`, `insufficient_session_balance`) and what is `left`; do not retry a refusal
with the same amount, and never try to work around a limit: only the user can change it.
"""

KeyId = Annotated[str, Field(
    description="The session key to pay from, e.g. 'skey_…' (see `whoami`).",
    min_length=1, max_length=100)]
Amount = Annotated[str, Field(
    description="Amount as a decimal string in token units, e.g. '12.50' (never a number; "
    "at most as many decimals as the token has, 6 for USDC).",
    pattern=r"^[0-9]+(\.[0-9]+)?$", max_length=40)]
Recipient = Annotated[str, Field(
    description="The recipient's wallet address on the key's chain (Solana base58 or EVM 0x).",
    min_length=1, max_length=100)]


@dataclass(frozen=True)
class Backend:
    """What the tools act through. `zpay()` returns a client holding the calling agent's
    credentials (per request over HTTP); `http()` the client that fetches x402 URLs."""

    zpay: Callable[[], AsyncZpay]
    http: Callable[[], httpx.AsyncClient]
    payment_wait_s: float = 20.0


class Refusal(Exception):
    """A tool failure the agent should read: becomes an `isError` result."""

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code, self.message, self.extra = code, message, extra


def _result(body: dict[str, Any], *, error: bool = False) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=json.dumps(body, indent=1))],
                          structured_content=body, is_error=error)


def _refused(exc: Refusal) -> CallToolResult:
    return _result({"error": {"code": exc.code, "message": exc.message}, **exc.extra},
                   error=True)


def _from_api(exc: ZpayError) -> Refusal:
    """zpay's problem as a refusal: its stable code and message, never a token."""
    extra: dict[str, Any] = {}
    if exc.status is not None:
        extra["http_status"] = exc.status
    if exc.status == 401:
        return Refusal(exc.code, "zpay refused this agent's credentials (unknown, rotated, "
                       "frozen or revoked token): " + exc.detail, **extra)
    return Refusal(exc.code, exc.detail, **extra)


async def _left(zpay: AsyncZpay, key_id: str, amount: str) -> dict[str, Any] | None:
    """What the key and its policy still allow (the `can_afford` answer), or None."""
    try:
        answer = await zpay.session_keys.can_afford(key_id, amount)
    except ZpayError:
        return None
    raw = dict(answer.raw)
    return {k: raw.get(k) for k in (
        "session_key_remaining", "effective_limit", "session_remaining_today",
        "session_remaining_week", "session_remaining_month")}


def _key_summary(key: SessionKey, now: datetime) -> dict[str, Any]:
    fields = ("id", "status", "chain", "token", "remaining_amount", "funded_amount",
              "spent_amount", "held_amount", "expires_at", "linked_session_id",
              "transaction_count")
    summary = {k: key.raw.get(k) for k in fields}
    # What zpay checks inline: an active key, not past its expiry, with something left.
    summary["can_pay"] = (key.status == "active" and key.remaining_amount > 0
                          and (key.expires_at is None or key.expires_at > now))
    return summary


def _policy_summary(raw: dict[str, Any]) -> dict[str, Any]:
    limits = {k: raw.get(k) for k in (
        "max_per_transaction", "max_per_day", "max_per_week", "max_per_month", "max_total",
        "allowed_recipients", "allowed_chains", "active_hours", "timezone")}
    limits["total_used"] = raw.get("total_committed")
    windows = dict(raw.get("windows") or {})
    per_window = {name: windows[name] for name in ("day", "week", "month")
                  if isinstance(windows.get(name), dict)}
    return {"id": raw.get("id"), "status": raw.get("status"),
            "expires_at": raw.get("expires_at"), "window_mode": windows.get("mode"),
            "limits": limits, "windows": per_window}


async def _whoami(backend: Backend) -> dict[str, Any]:
    zpay = backend.zpay()
    page = await zpay.session_keys.list(limit=MAX_KEYS).first_page()
    policies: dict[str, dict[str, Any]] = {}
    keys = []
    now = datetime.now(UTC)
    for key in page.data:
        entry = _key_summary(key, now)
        session_id = key.linked_session_id
        if session_id:
            if session_id not in policies:
                policies[session_id] = _policy_summary((await zpay.sessions.get(session_id)).raw)
            entry["policy"] = policies[session_id]
            entry["can_pay"] = entry["can_pay"] and policies[session_id]["status"] == "active"
        keys.append(entry)
    agent_ids = sorted({k.agent_id for k in page.data})
    return {"agent_id": agent_ids[0] if len(agent_ids) == 1 else None,
            "session_keys": keys, "more_keys": page.has_more}


async def _can_afford(backend: Backend, session_key_id: str, amount: str,
                     recipient: str | None) -> dict[str, Any]:
    answer = await backend.zpay().session_keys.can_afford(session_key_id, amount,
                                                          recipient=recipient)
    return dict(answer.raw)


async def _pay(backend: Backend, session_key_id: str, amount: str, recipient: str,
              idempotency_key: str, description: str | None) -> dict[str, Any]:
    zpay = backend.zpay()
    try:
        payment = await zpay.payments.create(session_key_id, amount, recipient,
                                             description=description,
                                             idempotency_key=idempotency_key)
    except PaymentRefused as exc:
        raise Refusal(exc.code, exc.detail, http_status=exc.status,
                      left=await _left(zpay, session_key_id, amount)) from exc
    body = dict(payment.raw)
    if payment.status not in ("succeeded", "failed"):
        try:
            body = dict((await zpay.payments.wait(payment.id,
                                                  timeout_s=backend.payment_wait_s)).raw)
        except WaitTimeout:
            body["note"] = ("still in flight on the chain; it is not lost and will not be paid "
                            "twice: check it later with get_payment")
    body["replayed"] = payment.replayed
    body["idempotency_key"] = idempotency_key
    return body


async def _pay_x402(backend: Backend, url: str, session_key_id: str, max_amount: str,
                   method: str, body: dict[str, Any] | list[Any] | str | None
                   ) -> dict[str, Any]:
    from zpay.client.x402 import X402AmountExceeded, afetch_with_payment

    zpay = backend.zpay()
    kwargs: dict[str, Any] = {}
    if isinstance(body, str):
        if len(body) > BODY_CHARS_MAX * 5:
            raise Refusal("body_too_large", "the request body is too large")
        kwargs["content"] = body.encode()
        kwargs["headers"] = {"content-type": "text/plain; charset=utf-8"}
    elif body is not None:
        kwargs["json"] = body
    try:
        fetched = await afetch_with_payment(zpay, url, session_key_id=session_key_id,
                                            max_amount=max_amount, method=method,
                                            http=backend.http(), **kwargs)
    except X402AmountExceeded as exc:
        raise Refusal(exc.code, exc.detail, required=_text(exc.required),
                      max_amount=_text(exc.max_amount)) from exc
    except PaymentRefused as exc:
        raise Refusal(exc.code, exc.detail, http_status=exc.status,
                      left=await _left(zpay, session_key_id, max_amount)) from exc
    except UrlRefused as exc:
        raise Refusal("url_not_allowed", str(exc)) from exc
    except httpx.HTTPError as exc:
        raise Refusal("x402_fetch_failed",
                      f"could not fetch {url}: {type(exc).__name__}") from exc
    response = fetched.response
    text = response.text
    result: dict[str, Any] = {
        "status_code": response.status_code,
        "content_type": response.headers.get("content-type"),
        "body": text[:BODY_CHARS_MAX], "body_truncated": len(text) > BODY_CHARS_MAX,
        "payment": None,
    }
    if fetched.payment is not None:
        p = fetched.payment
        result["payment"] = {"id": p.id, "status": p.status, "amount": _text(p.amount),
                             "pay_to": p.pay_to, "network": p.network, "chain": p.chain,
                             "settlement_tx": p.settlement_tx}
    return result


class UrlRefused(Exception):
    """pay_x402 may not fetch this URL from here (zpay's own network, over HTTP)."""


def _text(value: Any) -> str:
    return format(value, "f") if hasattr(value, "as_tuple") else str(value)


async def _get_payment(backend: Backend, payment_id: str) -> dict[str, Any]:
    return dict((await backend.zpay().payments.get(payment_id)).raw)


async def _list_payments(backend: Backend, session_key_id: str | None,
                        limit: int) -> dict[str, Any]:
    page = await backend.zpay().payments.list(session_key_id=session_key_id,
                                              limit=limit).first_page()
    return {"data": [dict(p.raw) for p in page.data], "has_more": page.has_more}


async def _run(call: Any) -> CallToolResult:
    try:
        return _result(await call)
    except Refusal as exc:
        return _refused(exc)
    except ZpayError as exc:
        return _refused(_from_api(exc))


def build_server(backend: Backend) -> MCPServer:
    """An MCP server with exactly the six agent tools, acting through `backend`."""
    # MCPServer's constructor calls logging.basicConfig (a Rich handler on the root logger);
    # zpay sets up its own logging, which that would silently pre-empt: undo it.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        server: MCPServer = MCPServer("zpay", instructions=INSTRUCTIONS)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    read_only = ToolAnnotations(read_only_hint=True, open_world_hint=False)

    @server.tool(title="Who am I: my session keys and what they can still spend",
                 annotations=read_only)
    async def whoami() -> CallToolResult:
        """List this agent's session keys (newest first): status, remaining balance,
        expiry, and for a key linked to a policy its limits and what is left in each
        day/week/month window (and when it frees up). Only keys with `can_pay: true`
        (status active) can pay. Call this first."""
        return await _run(_whoami(backend))

    @server.tool(title="Check a payment without paying", annotations=read_only)
    async def can_afford(
        session_key_id: KeyId, amount: Amount,
        recipient: Annotated[str, Field(
            description="Optional recipient address: also checks the policy's allowed "
            "recipients.", max_length=100)] = "",
    ) -> CallToolResult:
        """Would this payment pass, right now? Runs every check `pay` runs (key status and
        balance, per-transaction, day/week/month and total limits, allowed recipients and
        chains, active hours) without moving or holding anything. Answers `allowed`, the
        `reason` code (`approved` or why not), `effective_limit` (the most one payment
        could be now) and the remaining balance and window allowances."""
        return await _run(_can_afford(backend, session_key_id, amount, recipient or None))

    @server.tool(title="Pay a recipient from a session key",
                 annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False,
                                             idempotent_hint=True, open_world_hint=True))
    async def pay(
        session_key_id: KeyId, amount: Amount, recipient: Recipient,
        idempotency_key: Annotated[str, Field(
            description="A unique id YOU choose for this purchase, e.g. 'order-1234' or a "
            "UUID. If a pay call fails, times out or you are unsure whether it went through, "
            "call pay again with the SAME idempotency_key (and the same amount and "
            "recipient): zpay then returns the first payment instead of paying twice. Use a "
            "NEW key only for a new, different purchase.",
            min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$")],
        description: Annotated[str, Field(
            description="Optional note stored with the payment (what it is for).",
            max_length=500)] = "",
    ) -> CallToolResult:
        """Pay `amount` to `recipient` from one of your session keys, on the key's chain
        and token. zpay checks the key's balance and policy first; if refused, nothing
        moves and the error carries the reason `code` (e.g. `per_transaction_limit`,
        `daily_limit`, `recipient_not_allowed`, `insufficient_session_balance`,
        `session_key_expired`) and what is `left`. On success returns the payment
        (`status` succeeded, `tx_id` on chain)."""
        return await _run(_pay(backend, session_key_id, amount, recipient, idempotency_key,
                               description or None))

    @server.tool(title="Fetch a URL, paying its x402 price within a maximum",
                 annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False,
                                             idempotent_hint=False, open_world_hint=True))
    async def pay_x402(
        url: Annotated[str, Field(description="The http(s) URL of the resource.",
                                  pattern=r"^https?://", max_length=2000)],
        session_key_id: KeyId,
        max_amount: Annotated[str, Field(
            description="The most you accept to pay for this one request, as a decimal "
            "string in token units, e.g. '0.10'. If the resource asks more, nothing is "
            "paid and you get the price in the error.",
            pattern=r"^[0-9]+(\.[0-9]+)?$", max_length=40)],
        method: Annotated[Literal["GET", "POST"], Field(
            description="HTTP method (default GET).")] = "GET",
        body: Annotated[dict[str, Any] | list[Any] | str | None, Field(
            description="Optional request body: a JSON object or array (sent as JSON), "
            "or text.")] = None,
    ) -> CallToolResult:
        """Fetch `url`. If it answers 402 Payment Required (the x402 protocol), zpay pays
        the price from the session key — within `max_amount` and the key's balance and
        policy — and fetches it again with the payment. Returns the final HTTP status,
        content type, body (text, truncated to 20000 characters) and the zpay payment
        (null if no payment was needed). A refusal carries zpay's reason `code`."""
        return await _run(_pay_x402(backend, url, session_key_id, max_amount, method, body))

    @server.tool(title="Show one payment", annotations=read_only)
    async def get_payment(
        payment_id: Annotated[str, Field(description="The payment id, e.g. 'pay_…'.",
                                         min_length=1, max_length=100)],
    ) -> CallToolResult:
        """One of this agent's payments: status (authorized, submitted, succeeded,
        failed), amount, recipient, chain transaction id and failure code if any."""
        return await _run(_get_payment(backend, payment_id))

    @server.tool(title="List my payments", annotations=read_only)
    async def list_payments(
        session_key_id: Annotated[str, Field(
            description="Only this session key's payments (default: all of yours).",
            max_length=100)] = "",
        limit: Annotated[int, Field(description="How many, newest first (1-100).",
                                    ge=1, le=100)] = 20,
    ) -> CallToolResult:
        """This agent's payments, newest first, with `has_more` when there are older
        ones."""
        return await _run(_list_payments(backend, session_key_id or None, limit))

    return server

