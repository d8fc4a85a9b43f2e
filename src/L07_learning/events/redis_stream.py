"""Redis Streams consumer-group source (contract §1.8, §8 #24: the local stand-in for the Kafka topics).

Delivery semantics:

* ``XREADGROUP`` reads new entries (``>``); on start the consumer first re-reads its own pending entries (``0``),
  so a restarted consumer with the same name resumes where it stopped.
* Entries are acknowledged (``XACK``) only after the ingestion transaction committed (``SourceBatch.ack``).
* ``XAUTOCLAIM`` takes over entries that another consumer read but did not acknowledge for ``claim_idle_ms``
  (a consumer that died mid-batch). Redelivery is safe: event ids already claimed in the DB are no-ops.
* An entry delivered more than ``max_deliveries`` times (it keeps failing the batch) is copied to the dead-letter
  stream with the reason and acknowledged. Rejected events (E70xx) also go to the dead-letter stream, with their code.

Entry format: field ``event`` holds a structured-mode JSON event; or fields ``ce-*``/``ce_*`` plus ``data`` carry a
binary-mode event (attributes as fields, the JSON body in ``data``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..models.error_codes import L07Error, L07ErrorCode
from .cloudevent import RawEvent
from .sources import SourceBatch

log = logging.getLogger(__name__)


def safe_url(url: str) -> str:
    """``url`` with its password (user-info or ``?password=``) shown as ``***``, for messages and logs."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            user, sep, _password = userinfo.partition(":")
            netloc = f"{user}{sep}***@{host}" if sep else netloc
        query = parts.query
        if "password" in query.lower():
            query = urlencode([(k, "***" if k.lower() == "password" else v) for k, v in parse_qsl(query)], safe="*")
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "<unparseable redis url>"


def _text(value: bytes | str | Any) -> str:
    """A field name or value as text: stream entries are bytes, and nothing guarantees they are UTF-8."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def entry_to_raw(fields: dict[bytes | str, bytes | str]) -> Any:
    """A stream entry's fields as a raw event (structured body, or a ``RawEvent`` with binary-mode headers).

    Never raises: whatever a producer wrote into the stream becomes an event the parser accepts or rejects."""
    norm = {_text(k): v for k, v in fields.items()}
    if "event" in norm:
        return norm["event"]
    headers = {}
    for key, value in norm.items():
        lk = key.lower()
        if lk.startswith(("ce-", "ce_")):
            headers["ce-" + lk[3:]] = _text(value)
        elif lk in ("content-type", "datacontenttype"):
            headers["content-type"] = _text(value)
    if headers:
        return RawEvent(body=norm.get("data") or b"", headers=headers)
    return norm  # no recognised layout: the parser rejects it with E7015


class RedisStreamSource:
    """Consumes one stream through a consumer group.

    Args:
        url: Redis URL.
        stream: Stream key (topic), e.g. ``execution.traces``.
        group: Consumer group, e.g. ``l07-training-extractor``.
        consumer: This consumer's name (default ``<host>-<pid>``).
        batch_size: Entries per read (one DB transaction).
        block_ms: How long a read waits for new entries.
        claim_idle_ms: Pending entries idle this long are taken over from their (dead) consumer.
        max_deliveries: Deliveries after which an entry goes to the dead-letter stream.
        dead_letter_stream: Default ``<stream>.dlq``.
        idle_exit_s: Stop after this many seconds with nothing to read and nothing pending (None: run forever).
        max_events: Stop after this many entries were acknowledged (None: no limit).
        redact: Applied to every field value and the reason of a dead-lettered entry before it is written (the
            dead-letter stream keeps the payload for an operator, never a secret or PII in clear).
    """

    transport = "redis"

    def __init__(
        self,
        url: str,
        stream: str,
        group: str,
        consumer: str | None = None,
        *,
        batch_size: int = 100,
        block_ms: int = 1000,
        claim_idle_ms: int = 30_000,
        max_deliveries: int = 5,
        dead_letter_stream: str | None = None,
        idle_exit_s: float | None = None,
        max_events: int | None = None,
        redact: Callable[[Any], Any] | None = None,
    ) -> None:
        import redis.asyncio as aioredis  # noqa: PLC0415 - optional dependency, only for this source

        self.client = aioredis.from_url(url)
        self.url = url
        # Also masked inside a client error's own text, should the client ever quote its connection settings.
        self._password = self.client.connection_pool.connection_kwargs.get("password") or ""
        self.stream = stream
        self.group = group
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.batch_size = max(1, batch_size)
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.max_deliveries = max(1, max_deliveries)
        self.dead_letter_stream = dead_letter_stream or f"{stream}.dlq"
        self.idle_exit_s = idle_exit_s
        self.max_events = max_events
        # Storage form of a dead-lettered entry's fields and reason (the service layer's secret and PII redactor).
        self.redact = redact or (lambda value: value)
        self.acked = 0
        self.dead_lettered = 0
        self._stopped = False

    async def _call(self, coro: Any) -> Any:
        try:
            return await coro
        except Exception as exc:  # noqa: BLE001 - every client failure is the contract's stream disconnection
            from redis.exceptions import RedisError  # noqa: PLC0415

            if isinstance(exc, (RedisError, OSError)):
                message = f"redis {safe_url(self.url)}: {exc}"
                if len(self._password) >= 4:  # a shorter one would mask ordinary words of the message
                    message = message.replace(self._password, "***")
                raise L07Error(L07ErrorCode.EVENT_STREAM_DISCONNECTION, message) from exc
            raise

    async def ensure_group(self) -> None:
        """Create the consumer group (and the stream) if missing."""
        from redis.exceptions import ResponseError  # noqa: PLC0415

        try:
            await self._call(self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True))
        except L07Error as exc:
            if not isinstance(exc.__cause__, ResponseError) or "BUSYGROUP" not in str(exc.__cause__):
                raise

    def stop(self) -> None:
        """Ask ``batches`` to return after the current batch."""
        self._stopped = True

    async def batches(self) -> AsyncIterator[SourceBatch]:
        await self.ensure_group()
        own_pending = True
        idle_since = time.monotonic()
        while not self._stopped:
            if self.max_events is not None and self.acked >= self.max_events:
                return
            entries = await self._reclaim()
            if not entries and own_pending:
                # Re-reading its own pending entries counts as a delivery too: an entry that failed (or killed)
                # this consumer max_deliveries times is dead-lettered here, so a restart cannot loop on it.
                entries = await self._read("0")
                own_pending = bool(entries)
                entries = await self._drop_over_delivered(entries)
            if not entries:
                entries = await self._read(">")
            if not entries:
                if self.idle_exit_s is not None and time.monotonic() - idle_since >= self.idle_exit_s:
                    pending = await self._call(self.client.xpending(self.stream, self.group))
                    if not pending or not pending.get("pending"):
                        return
                continue
            idle_since = time.monotonic()
            ids = [eid for eid, _ in entries]
            raws = [entry_to_raw(fields) for _, fields in entries]
            yield SourceBatch(raws, ack=self._acker(ids, entries), fail=self._on_fail)

    async def _read(self, start: str) -> list[tuple[bytes, dict]]:
        block = None if start == "0" else self.block_ms
        resp = await self._call(self.client.xreadgroup(self.group, self.consumer, {self.stream: start},
                                                       count=self.batch_size, block=block))
        out: list[tuple[bytes, dict]] = []
        for _stream, entries in resp or []:
            # Own pending entries that were deleted from the stream come back with empty fields: just ack them.
            for eid, fields in entries:
                if fields:
                    out.append((eid, fields))
                else:
                    await self._call(self.client.xack(self.stream, self.group, eid))
        return out

    async def _reclaim(self) -> list[tuple[bytes, dict]]:
        """Take over entries idle past ``claim_idle_ms``; dead-letter those delivered too often."""
        resp = await self._call(self.client.xautoclaim(self.stream, self.group, self.consumer,
                                                       min_idle_time=self.claim_idle_ms, start_id="0-0",
                                                       count=self.batch_size))
        claimed = [(eid, fields) for eid, fields in (resp[1] if resp else []) if fields]
        keep = await self._drop_over_delivered(claimed)
        if keep:
            log.info("reclaimed %d idle entries from %s", len(keep), self.stream, extra={"consumer": self.consumer})
        return keep

    async def _drop_over_delivered(self, entries: list[tuple[bytes, dict]]) -> list[tuple[bytes, dict]]:
        """``entries`` less those delivered more than ``max_deliveries`` times, which go to the dead-letter stream."""
        if not entries:
            return []
        counts = await self._delivery_counts([eid for eid, _ in entries])
        keep: list[tuple[bytes, dict]] = []
        for eid, fields in entries:
            n = counts.get(eid, 1)
            if n > self.max_deliveries:
                await self._dead_letter(eid, fields, reason=f"delivered {n} times without success",
                                        code=L07ErrorCode.EVENT_STREAM_DISCONNECTION.value)
                await self._call(self.client.xack(self.stream, self.group, eid))
            else:
                keep.append((eid, fields))
        return keep

    async def _delivery_counts(self, ids: list[bytes]) -> dict[bytes, int]:
        """Times each entry was delivered. One exact-id XPENDING per entry (in one round trip): a range from the
        smallest to the largest id would have to order ids numerically ("1-10" > "1-9"), and would also scan the
        pending entries of other consumers in between."""
        pipe = self.client.pipeline(transaction=False)
        for eid in ids:
            pipe.xpending_range(self.stream, self.group, min=eid, max=eid, count=1)
        out: dict[bytes, int] = {}
        for eid, rows in zip(ids, await self._call(pipe.execute())):
            for r in rows or []:
                out[eid] = int(r["times_delivered"])
        return out

    def _stored(self, value: Any) -> Any:
        try:
            return self.redact(value)
        except Exception:  # noqa: BLE001 - a payload nested past the recursion limit must not kill the consumer
            # Withheld rather than kept in clear; the rejected-events table holds its text-redacted form.
            return "<payload withheld: it could not be redacted>"

    async def _dead_letter(self, eid: bytes, fields: dict, reason: str, code: str) -> None:
        entry = {**{_text(k): self._stored(v) for k, v in fields.items()},
                 "l07_source_id": eid, "l07_code": code, "l07_reason": self._stored(reason[:1000])}
        await self._call(self.client.xadd(self.dead_letter_stream, entry))
        self.dead_lettered += 1
        log.warning("dead-lettered %s from %s: %s %s", eid, self.stream, code, reason)

    def _acker(self, ids: list[bytes], entries: list[tuple[bytes, dict]]):  # type: ignore[no-untyped-def]
        async def ack(result: Any) -> None:
            for (eid, fields), item in zip(entries, result.items):
                if item.status == "rejected":
                    await self._dead_letter(eid, fields, reason=item.reason or "", code=item.code or "")
            await self._call(self.client.xack(self.stream, self.group, *ids))
            self.acked += len(ids)

        return ack

    async def _on_fail(self, exc: Exception) -> None:
        # Leave the entries pending: XAUTOCLAIM retries them after claim_idle_ms and counts the deliveries.
        log.error("batch from %s failed, left pending for redelivery: %s", self.stream, exc)
        await asyncio.sleep(min(self.claim_idle_ms / 1000, 1.0))

    async def close(self) -> None:
        await self.client.aclose()
