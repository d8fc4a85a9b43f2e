"""Producer event signatures (contract §1.9, §7.4 ``verify_event_signatures``): ECDSA P-256 / SHA-256 over the
RFC 8785 canonical JSON of the event, checked against producer public keys registered in L07 and their bindings.

The pipeline is the one every transport uses (file, Redis, HTTP, in-process), so these tests drive it directly.
"""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from typer.testing import CliRunner

from L07_learning.events.cloudevent import RawEvent
from L07_learning.models.error_codes import L07Error
from L07_learning.services.access import AccessService
from L07_learning.services.ingestion.pipeline import IngestionPipeline
from L07_learning.services.ingestion.provenance import canonical_json, sign_event
from L07_learning.store.db import Database
from L07_learning.store.repositories.events import RejectedEventRepository


def public_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def score(execution_id: str, **data: object) -> dict:
    return {"specversion": "1.0", "type": "com.agentic.evaluation.quality_score_computed",
            "source": "https://agentic.local/layers/l06", "id": str(uuid.uuid4()), "time": "2026-02-10T09:15:03.250Z",
            "data": {"execution_id": execution_id, "quality_score": 88.5, "confidence_level": 0.91, **data}}


def test_canonical_form_is_rfc8785() -> None:
    # The RFC 8785 §3.2.2 sample: key order, number forms and string escapes as every JCS library writes them.
    value = json.loads('{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000001, 0.0000001, 1e21, 1e20, -0.0],'
                       ' "string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",'
                       ' "literals": [null, true, false], "\\u00e9": 1, "\\ud83d\\ude00": 2, "\\ufb33": 3}')
    assert canonical_json(value) == (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,0.000001,1e-7,1e+21,'
        '100000000000000000000,0],"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/","é":1,"😀":2,"דּ":3}'
    ).encode()
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


@pytest.fixture
def keys() -> dict[str, ec.EllipticCurvePrivateKey]:
    return {name: ec.generate_private_key(ec.SECP256R1()) for name in ("l02", "l06", "stranger")}


async def test_signed_events_verify_and_forged_ones_are_rejected(
    db: Database, settings, keys, sample_cloud_event: dict  # type: ignore[no-untyped-def]
) -> None:
    access = AccessService(db)
    await access.add_producer_key(public_pem(keys["l02"]), sources=["L02"], kinds=["trace"], key_id="l02-runtime",
                                  actor="test")
    await access.add_producer_key(public_pem(keys["l06"]), sources=["L06"], kinds=["score"], key_id="l06-eval",
                                  actor="test")
    pipeline = IngestionPipeline(db=db, settings=settings.model_copy(update={"verify_event_signatures": True}))
    execution_id = sample_cloud_event["data"]["execution_id"]

    good_trace = sign_event(sample_cloud_event, keys["l02"], "l02-runtime")
    good_score = sign_event(score(execution_id), keys["l06"], "l06-eval")
    tampered = sign_event(score("exec-2"), keys["l06"], "l06-eval")
    tampered["data"]["quality_score"] = 100
    unsigned = score("exec-3")
    wrong_key = sign_event(score("exec-4"), keys["stranger"], "l06-eval")
    unknown_key = sign_event(score("exec-5"), keys["stranger"], "nobody")
    # A genuine L02 signature on an event that claims to come from L06: the key is not bound to that source.
    l02_as_l06 = sign_event(score("exec-6"), keys["l02"], "l02-runtime")
    reviewer = sign_event(score("exec-7", evaluation_method="human_review", reference_output="x"), keys["l06"], "l06-eval")
    # The signature covers the envelope too: moving a signed event to another id breaks it.
    replayed_as_new = dict(copy.deepcopy(good_score), id="other-id")

    events = [good_trace, json.dumps(good_score).encode(), tampered, unsigned, wrong_key, unknown_key, l02_as_l06,
              reviewer, replayed_as_new]
    result = await pipeline.ingest(events, "file")
    outcome = [(item.status, item.code) for item in result.items]
    assert outcome[:2] == [("pending", None), ("extracted", None)], result.items
    assert outcome[2:] == [("rejected", "E7115")] * 7, result.items
    reasons = [item.reason for item in result.items[2:]]
    assert "signature" in reasons[0] and "not signed" in reasons[1] and "signature" in reasons[2]
    assert "nobody" in reasons[3] and "l06" in reasons[4] and "human_review" in reasons[5]
    async with db.session() as s:
        assert len(await RejectedEventRepository(s).list(code="E7115")) == 7


async def test_binary_mode_signatures_and_revoked_keys(db: Database, settings, keys) -> None:  # type: ignore[no-untyped-def]
    access = AccessService(db)
    await access.add_producer_key(public_pem(keys["l06"]), sources=["L06"], kinds=["score"], key_id="l06-eval",
                                  actor="test")
    pipeline = IngestionPipeline(db=db, settings=settings.model_copy(update={"verify_event_signatures": True}))

    signed = sign_event(dict(score("exec-b1"), datacontenttype="application/json"), keys["l06"], "l06-eval")
    headers = {f"ce-{k}": str(v) for k, v in signed.items() if k not in ("data", "datacontenttype")}
    headers["content-type"] = "application/json"
    binary = RawEvent(json.dumps(signed["data"]).encode(), headers)
    result = await pipeline.ingest([binary], "http")
    assert [(i.status, i.code) for i in result.items] == [("pending", None)], result.items

    assert await access.remove_producer_key("l06-eval", actor="test")
    again = await pipeline.ingest([sign_event(score("exec-b2"), keys["l06"], "l06-eval")], "file")
    assert [(i.status, i.code) for i in again.items] == [("rejected", "E7115")]
    assert "revoked" in again.items[0].reason


async def test_without_verification_unsigned_events_still_flow(db: Database, settings) -> None:  # type: ignore[no-untyped-def]
    assert settings.verify_event_signatures is False
    result = await IngestionPipeline(db=db, settings=settings).ingest([score("exec-u")], "file")
    assert [(i.status, i.code) for i in result.items] == [("pending", None)]


async def test_producer_keys_must_be_p256_public_keys(sqlite_db: Database, keys) -> None:  # type: ignore[no-untyped-def]
    access = AccessService(sqlite_db)
    other_curve = ec.generate_private_key(ec.SECP384R1())
    for pem in ("not a key", public_pem(other_curve)):
        with pytest.raises(L07Error) as exc:
            await access.add_producer_key(pem, sources=["L02"], kinds=["trace"], actor="test")
        assert exc.value.code.value == "E7110"
    private = keys["l02"].private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()).decode()
    with pytest.raises(L07Error):
        await access.add_producer_key(private, sources=["L02"], kinds=["trace"], actor="test")
    record = await access.add_producer_key(public_pem(keys["l02"]), sources=["L02"], actor="test")
    assert record.kinds == ("trace",) and len(record.fingerprint) == 64
    with pytest.raises(L07Error):  # the same public key twice
        await access.add_producer_key(public_pem(keys["l02"]), sources=["L02"], actor="test")


def test_cli_registers_lists_and_removes_producer_keys(settings, tmp_path: Path, keys) -> None:  # type: ignore[no-untyped-def]
    from L07_learning.cli.main import app as cli

    pem = tmp_path / "l06.pub.pem"
    pem.write_text(public_pem(keys["l06"]))
    runner = CliRunner()
    added = runner.invoke(cli, ["keys", "producers", "add", "--public-key", str(pem), "--source", "L06",
                                "--kinds", "score,human_review", "--key-id", "l06-eval", "--json"])
    assert added.exit_code == 0, added.output
    assert json.loads(added.stdout)["kinds"] == ["human_review", "score"]
    listed = json.loads(runner.invoke(cli, ["keys", "producers", "list", "--json"]).stdout)
    assert [(k["key_id"], k["sources"]) for k in listed] == [("l06-eval", ["l06"])]
    assert "PRIVATE" not in json.dumps(listed)

    event = tmp_path / "score.json"
    event.write_text(json.dumps(score("exec-cli")))
    private = tmp_path / "l06.pem"
    private.write_bytes(keys["l06"].private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    signed = runner.invoke(cli, ["keys", "producers", "sign", str(event), "--private-key", str(private),
                                 "--key-id", "l06-eval"])
    assert signed.exit_code == 0, signed.output
    assert json.loads(signed.stdout)["signaturekeyid"] == "l06-eval"

    removed = runner.invoke(cli, ["keys", "producers", "remove", "l06-eval"])
    assert removed.exit_code == 0, removed.output
    assert json.loads(runner.invoke(cli, ["keys", "producers", "list", "--json"]).stdout) == []
