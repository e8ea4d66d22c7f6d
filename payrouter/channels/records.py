"""Journal records of the ``batch-settlement`` scheme: what each kind looks like, and the
claim and settle records the claimer writes.

Every such record has ``scheme = "batch-settlement"`` and the price table's ``network``,
``asset`` and ``pay_to``. Kinds, told apart by id prefix and ``path``:

- voucher (the gate; one per paid request): ``batch:{channel_id}:{charged_before}``, ``nonce``
  = the channel id, ``charged`` = what the request charged once committed (``settled``);
- claim (the claimer): ``batch-claim:{tx}``, path ``claim``, ``amount`` = the sum of the
  channels' claimed deltas in that transaction, the deltas themselves in ``payment``;
- settle (the claimer): ``batch-settle:{tx}``, path ``settle``, ``amount`` = the ``Settled`` amount;
- the channel's own money movements (`movement_record`; written by the gate when it sends one,
  and by the claimer for any it finds on chain that the journal lacks), ``nonce`` = the channel
  id, ``payer`` the channel's payer, ``amount`` what moved:

  - deposit: ``batch-deposit:{channel_id}:{tx}``, path ``deposit`` (into the channel);
  - refund: ``batch-refund:{channel_id}:{refund nonce}``, path ``refund`` (back to the payer);
  - withdrawal: ``batch-withdraw:{channel_id}:{tx}``, path ``withdraw`` (a finalised
    withdrawal: back to the payer, without us).

  A channel's deposits minus its refunds and withdrawals is its on-chain ``balance``.

Only vouchers carry a ``charged``: claims, settles and movements move money the vouchers
already counted (or the payer's own), so revenue (the sum of ``charged`` over settled records)
counts it once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from payrouter.journal import PaymentRecord, State, now_ms

__all__ = [
    "CLAIM_PATH",
    "CLAIMER_OWNER",
    "DEPOSIT_PATH",
    "MOVEMENT_OVER",
    "MOVEMENT_PATHS",
    "MOVEMENT_SIGN",
    "REFUND_PATH",
    "SCHEME",
    "SETTLE_PATH",
    "WITHDRAW_PATH",
    "claim_deltas",
    "claim_record",
    "is_call",
    "is_voucher",
    "movement_record",
    "settle_record",
    "voucher_charged_before",
]

SCHEME = "batch-settlement"
CLAIM_PATH = "claim"
SETTLE_PATH = "settle"
DEPOSIT_PATH = "deposit"
REFUND_PATH = "refund"
WITHDRAW_PATH = "withdraw"
MOVEMENT_PATHS = (DEPOSIT_PATH, REFUND_PATH, WITHDRAW_PATH)
# the states a movement's settled record may be written over: itself, a refund journaled
# pending (sent, its answer lost) and one given up on (dropped, then mined after all)
MOVEMENT_OVER = (State.PENDING, State.RELEASED, State.SETTLED)
# how each movement changes the channel's on-chain balance
MOVEMENT_SIGN = {DEPOSIT_PATH: 1, REFUND_PATH: -1, WITHDRAW_PATH: -1}
# the owner of every record the claimer writes: any claimer instance may finish another's
CLAIMER_OWNER = "claimer"
# the owner of movement records: the gate and the claimer write the same ids
_MOVEMENT_OWNER = "channels"
_VOUCHER_PREFIX = "batch:"


def is_voucher(record: PaymentRecord) -> bool:
    """True for a batch-settlement voucher record (one paid request on a channel)."""
    return record.scheme == SCHEME and record.id.startswith(_VOUCHER_PREFIX)


def is_call(record: PaymentRecord) -> bool:
    """True for the record of a paid call (an exact payment or a voucher); False for a channel's
    money movements (deposits, claims, settles, refunds), which carry no revenue of their own."""
    return record.scheme != SCHEME or is_voucher(record)


def voucher_charged_before(record: PaymentRecord) -> int | None:
    """The channel's ``charged`` when the voucher's request began (from its id), or None
    when the id is not ``batch:{channel_id}:{integer}``."""
    parts = record.id.split(":")
    if len(parts) != 3 or not parts[2].isdigit():
        return None
    return int(parts[2])


def _record(
    record_id: str,
    path: str,
    state: str,
    *,
    network: str,
    asset: str,
    pay_to: str,
    amount: int,
    tx: str,
    payment: str,
    owner: str = CLAIMER_OWNER,
    payer: str = "",
    nonce: str = "",
    request: str = "",
) -> PaymentRecord:
    now = now_ms()
    return PaymentRecord(
        id=record_id,
        scheme=SCHEME,
        state=state,
        owner=owner,
        payer=payer,
        pay_to=pay_to,
        asset=asset,
        network=network,
        amount=amount,
        nonce=nonce,
        valid_before=0,
        x402_version=2,
        payment=payment,
        fingerprint="",
        request=request,
        path=path,
        stream=False,
        route="",
        model="",
        charged=0,
        delivered="",
        tx=tx,
        created_at=now,
        updated_at=now,
        settled_at=now if state == State.SETTLED else 0,
    )


def claim_record(
    tx: str, deltas: Mapping[str, tuple[int, int]], *, network: str, asset: str, pay_to: str, state: str
) -> PaymentRecord:
    """The record of the claim transaction ``tx``.

    ``deltas`` maps each claimed channel id to ``(new totalClaimed, delta)``; ``amount`` is
    the deltas' sum. ``state`` is ``settled`` (mined) or ``pending`` (sent, outcome unknown:
    ``deltas`` are then what was asked, and are replaced by the mined ones when it resolves).
    """
    payment = json.dumps(
        {"claims": [{"channelId": c, "totalClaimed": str(t), "delta": str(d)} for c, (t, d) in sorted(deltas.items())]},
        separators=(",", ":"),
    )
    amount = sum(d for _, d in deltas.values())
    return _record(
        f"batch-claim:{tx}",
        CLAIM_PATH,
        state,
        network=network,
        asset=asset,
        pay_to=pay_to,
        amount=amount,
        tx=tx,
        payment=payment,
    )


def claim_deltas(record: PaymentRecord) -> dict[str, tuple[int, int]]:
    """Inverse of `claim_record`'s ``payment``: channel id -> ``(totalClaimed, delta)``.

    Raises:
        ValueError: ``payment`` is not a claim record's.
    """
    try:
        doc = json.loads(record.payment)
        return {str(c["channelId"]): (int(c["totalClaimed"]), int(c["delta"])) for c in doc["claims"]}
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{record.id} holds no claim deltas") from exc


def settle_record(tx: str, amount: int, *, network: str, asset: str, pay_to: str, state: str) -> PaymentRecord:
    """The record of the settle transaction ``tx`` that paid ``amount`` to ``pay_to``
    (``state`` ``pending`` while in doubt: ``amount`` then 0 until it resolves)."""
    return _record(
        f"batch-settle:{tx}",
        SETTLE_PATH,
        state,
        network=network,
        asset=asset,
        pay_to=pay_to,
        amount=amount,
        tx=tx,
        payment="{}",
    )


def movement_record(
    path: str,
    channel_id: str,
    payer: str,
    amount: int,
    tx: str,
    *,
    network: str,
    asset: str,
    pay_to: str,
    refund_nonce: int = 0,
    request: str = "",
) -> PaymentRecord:
    """The settled record of a deposit, refund or withdrawal of ``channel_id`` (0x hex) mined in
    ``tx`` (module docstring; ``refund_nonce`` names a refund, ``request`` is the digest of the
    request whose payment carried a deposit).

    Raises:
        ValueError: ``path`` is not one of `MOVEMENT_PATHS`, or ``amount`` is negative.
    """
    if path not in MOVEMENT_PATHS:
        raise ValueError(f"not a channel movement: {path!r}")
    if amount < 0:
        raise ValueError("a movement's amount is never negative")
    tx = tx.lower()  # one id for one transaction, whoever names it
    key = str(refund_nonce) if path == REFUND_PATH else tx
    return _record(
        f"batch-{path}:{channel_id}:{key}",
        path,
        State.SETTLED,
        network=network,
        asset=asset,
        pay_to=pay_to,
        amount=amount,
        tx=tx,
        payment="{}",
        owner=_MOVEMENT_OWNER,
        payer=payer,
        nonce=channel_id,
        request=request,
    )
