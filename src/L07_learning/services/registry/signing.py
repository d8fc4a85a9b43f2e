"""Artifact signing keys: ECDSA P-256 / SHA-256, versioned, rotatable (contract §7.4).

Keys live in a key folder (default ``<home>/keys``, mode 0700), one PEM file per version (mode 0600) plus
``keyring.json`` naming the active version. The first key is made on first use. ``rotate()`` makes a new active key;
verification accepts the active key and the ``VERIFY_PREVIOUS_KEYS`` most recent previous ones, as the contract
requires, so signatures made before a rotation keep verifying until they are re-signed.

``signing_key_path`` may instead point at one PEM file managed outside L07 (Vault export, HSM-backed file): that key
is then the only key, its version is derived from its public-key fingerprint, and rotation happens outside L07.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import tempfile
from datetime import datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ...models._base import L07Model, utcnow
from ...models.error_codes import L07Error, L07ErrorCode

log = logging.getLogger(__name__)

KEY_PREFIX = "l07-signing-v"
KEYRING_FILE = "keyring.json"
# Contract §7.4: "Verification accepts the active key and the 2 previous ones."
VERIFY_PREVIOUS_KEYS = 2


class SigningKeyInfo(L07Model):
    """One signing key as ``l07 keys list`` shows it (never the private part)."""

    version: str
    created_at: datetime
    status: str  # active | previous (still verifies) | retired (no longer verifies)
    fingerprint: str  # sha256 of the DER public key, hex
    public_key_pem: str


class SigningKeyring:
    """Signs and verifies artifact checksums with versioned ECDSA P-256 keys.

    Args:
        key_path: A folder (managed keyring, created on first use) or an existing PEM file (external key).
    """

    def __init__(self, key_path: str | Path) -> None:
        self.key_path = Path(key_path).expanduser()

    # --- public API -----------------------------------------------------------------------------------------------

    @property
    def external(self) -> bool:
        """True when the key comes from one configured PEM file instead of the managed folder."""
        return self.key_path.is_file()

    def sign(self, message: bytes) -> tuple[str, str]:
        """Sign ``message`` with the active key.

        Returns:
            ``(signature, key_version)``: base64 of the DER ECDSA signature, and the version that made it.

        Raises:
            L07Error: E7200 when the key cannot be read or created.
        """
        try:
            version, key = self._active_key()
            der = key.sign(message, ec.ECDSA(hashes.SHA256()))
        except L07Error:
            raise
        except (OSError, ValueError, TypeError) as exc:
            raise L07Error(L07ErrorCode.MODEL_ARTIFACT_SIGNING_FAILED, f"cannot sign with the key at {self.key_path}: {exc}") from exc
        return base64.b64encode(der).decode("ascii"), version

    def verify(self, message: bytes, signature: str, key_version: str | None) -> None:
        """Check a signature made by ``sign``.

        Raises:
            L07Error: E7201 when the key version is unknown or retired, or the signature does not match.
        """
        if not signature or not key_version:
            raise L07Error(L07ErrorCode.MODEL_SIGNATURE_VERIFICATION_FAILED, "artifact carries no signature or key version")
        accepted = self._verifying_versions()
        if key_version not in accepted:
            known = key_version in self._all_versions()
            reason = "is retired (older than the active key and its 2 predecessors)" if known else "is unknown"
            raise L07Error(
                L07ErrorCode.MODEL_SIGNATURE_VERIFICATION_FAILED,
                f"signing key {key_version} {reason}; re-sign the artifact with the active key",
                key_version=key_version, accepted=accepted,
            )
        public = self._load_private(key_version).public_key()
        try:
            der = base64.b64decode(signature, validate=True)
            public.verify(der, message, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError) as exc:
            raise L07Error(
                L07ErrorCode.MODEL_SIGNATURE_VERIFICATION_FAILED,
                f"signature does not match (key {key_version}): possible tampering",
                key_version=key_version,
            ) from exc

    def rotate(self) -> SigningKeyInfo:
        """Make a new active key; earlier keys stay available for verification (within the contract's window).

        Raises:
            L07Error: E7200 when the key is external (rotate it where it is managed) or cannot be written.
        """
        if self.external:
            raise L07Error(
                L07ErrorCode.MODEL_ARTIFACT_SIGNING_FAILED,
                f"the signing key {self.key_path} is configured externally; rotate it where it is managed",
            )
        self._active_key()  # make sure a keyring exists before adding to it
        ring = self._read_ring()
        number = max(int(k["version"][len(KEY_PREFIX):]) for k in ring["keys"]) + 1
        version = self._create_key(number)
        ring = self._read_ring()
        ring["active"] = version
        self._write_ring(ring)
        log.info("signing key rotated", extra={"key_version": version})
        return next(k for k in self.list_keys() if k.version == version)

    def list_keys(self) -> list[SigningKeyInfo]:
        """Every key, newest first, with its status."""
        self._active_key()
        accepted = set(self._verifying_versions())
        active = self._active_version()
        out = []
        for entry in sorted(self._entries(), key=lambda e: e["version"], reverse=True):
            key = self._load_private(entry["version"])
            status = "active" if entry["version"] == active else ("previous" if entry["version"] in accepted else "retired")
            out.append(SigningKeyInfo(
                version=entry["version"], created_at=datetime.fromisoformat(entry["created_at"]), status=status,
                fingerprint=_fingerprint(key.public_key()), public_key_pem=_public_pem(key.public_key()),
            ))
        return out

    def public_key_pem(self, key_version: str) -> str:
        """The PEM public key of one version (what L04 needs to verify before loading)."""
        return _public_pem(self._load_private(key_version).public_key())

    # --- internals ------------------------------------------------------------------------------------------------

    def _active_key(self) -> tuple[str, ec.EllipticCurvePrivateKey]:
        if self.external:
            key = self._read_pem(self.key_path)
            return _external_version(key), key
        if not (self.key_path / KEYRING_FILE).exists():
            self._init_ring()
        version = self._active_version()
        return version, self._load_private(version)

    def _active_version(self) -> str:
        if self.external:
            return _external_version(self._read_pem(self.key_path))
        return str(self._read_ring()["active"])

    def _entries(self) -> list[dict]:
        if self.external:
            key = self._read_pem(self.key_path)
            created = datetime.fromtimestamp(self.key_path.stat().st_mtime).astimezone()
            return [{"version": _external_version(key), "created_at": created.isoformat()}]
        if not (self.key_path / KEYRING_FILE).exists():
            return []
        return list(self._read_ring()["keys"])

    def _all_versions(self) -> list[str]:
        return [e["version"] for e in self._entries()]

    def _verifying_versions(self) -> list[str]:
        """The active version plus the previous ones still accepted, newest first."""
        versions = sorted(self._all_versions(), reverse=True)
        if not versions:
            return []
        active = self._active_version()
        older = [v for v in versions if v < active]
        return [active] + older[:VERIFY_PREVIOUS_KEYS]

    def _load_private(self, version: str) -> ec.EllipticCurvePrivateKey:
        if self.external:
            key = self._read_pem(self.key_path)
            if _external_version(key) != version:
                raise L07Error(L07ErrorCode.MODEL_SIGNATURE_VERIFICATION_FAILED, f"signing key {version} is unknown")
            return key
        path = self.key_path / f"{version}.pem"
        if not path.exists():
            raise L07Error(L07ErrorCode.MODEL_SIGNATURE_VERIFICATION_FAILED, f"signing key {version} is unknown", key_version=version)
        return self._read_pem(path)

    @staticmethod
    def _read_pem(path: Path) -> ec.EllipticCurvePrivateKey:
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise L07Error(L07ErrorCode.MODEL_ARTIFACT_SIGNING_FAILED, f"cannot read signing key {path}: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise L07Error(L07ErrorCode.MODEL_ARTIFACT_SIGNING_FAILED, f"signing key {path} is not an ECDSA P-256 key")
        return key

    def _init_ring(self) -> None:
        self.key_path.mkdir(parents=True, exist_ok=True, mode=0o700)
        version = self._create_key(1)
        ring_path = self.key_path / KEYRING_FILE
        # O_EXCL: when two processes make the first key at once, the first keyring wins and the other adopts it.
        try:
            fd = os.open(ring_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return
        with os.fdopen(fd, "w") as fh:
            json.dump({"active": version, "keys": [self._entry(version)]}, fh, indent=2)
        log.info("signing key created", extra={"key_version": version, "path": str(self.key_path)})

    def _create_key(self, number: int) -> str:
        version = f"{KEY_PREFIX}{number:03d}"
        path = self.key_path / f"{version}.pem"
        pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return version  # made by a concurrent first use; keep that one
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        created = {"version": version, "created_at": utcnow().isoformat()}
        (self.key_path / f"{version}.json").write_text(json.dumps(created))
        if (self.key_path / KEYRING_FILE).exists():
            ring = self._read_ring()
            if version not in [k["version"] for k in ring["keys"]]:
                ring["keys"].append(created)
                self._write_ring(ring)
        return version

    def _entry(self, version: str) -> dict:
        meta = self.key_path / f"{version}.json"
        return json.loads(meta.read_text()) if meta.exists() else {"version": version, "created_at": utcnow().isoformat()}

    def _read_ring(self) -> dict:
        try:
            return json.loads((self.key_path / KEYRING_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise L07Error(L07ErrorCode.MODEL_ARTIFACT_SIGNING_FAILED, f"cannot read keyring in {self.key_path}: {exc}") from exc

    def _write_ring(self, ring: dict) -> None:
        # Write then rename, so a reader never sees half a keyring.
        fd, tmp = tempfile.mkstemp(dir=self.key_path, prefix=".keyring.")
        with os.fdopen(fd, "w") as fh:
            json.dump(ring, fh, indent=2)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.key_path / KEYRING_FILE)


def _public_pem(public: ec.EllipticCurvePublicKey) -> str:
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


def _fingerprint(public: ec.EllipticCurvePublicKey) -> str:
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def _external_version(key: ec.EllipticCurvePrivateKey) -> str:
    return f"l07-signing-ext-{_fingerprint(key.public_key())[:12]}"
