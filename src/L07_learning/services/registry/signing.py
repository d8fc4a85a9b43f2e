"""Artifact signing keys: ECDSA P-256 / SHA-256, versioned, rotatable (contract §7.4).

Keys live in a key folder (default ``<home>/keys``, mode 0700), one PEM file per version (mode 0600) plus
``keyring.json`` naming the active version. The first key is made on first use. ``rotate()`` makes a new active key;
verification accepts the active key and the ``VERIFY_PREVIOUS_KEYS`` most recent previous ones, as the contract
requires, so signatures made before a rotation keep verifying until they are re-signed.

``signing_key_path`` may instead point at one PEM file managed outside L07 (Vault export, HSM-backed file): that key
is then the only signing key, its version is derived from its public-key fingerprint, and rotation happens outside L07.

Verification never reads a private key. Each key's public half is pinned when the key is made or first used
(``<version>.pub.pem``: in the key folder, or in ``pin_dir`` for an external PEM), and a signature verifies only
against a pinned public key. Everything fails closed: a configured key path that does not exist is an E7200 error, not
a fresh keyring (only the default ``<home>/keys`` is created on first use); a version without a pin is E7201; a private
key that no longer matches its pin is refused for signing (E7200).
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
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ...models._base import L07Model, utcnow
from ...models.error_codes import L07Error, L07ErrorCode
from ...settings import private_dir

log = logging.getLogger(__name__)

KEY_PREFIX = "l07-signing-v"
EXTERNAL_PREFIX = "l07-signing-ext-"
KEYRING_FILE = "keyring.json"
PIN_SUFFIX = ".pub.pem"
_PEM_SUFFIXES = frozenset({".pem", ".key"})
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
    """Signs with versioned ECDSA P-256 keys; verifies with their pinned public keys only.

    Args:
        key_path: A folder (managed keyring) or an existing PEM file (external key).
        create: Whether a missing ``key_path`` may become a new managed keyring (only the default location should).
            When False a missing path is an E7200 error on signing.
        pin_dir: Where the public keys of an external PEM are pinned (default ``<pem folder>/l07-pinned-keys``);
            a managed keyring pins inside its own folder.
    """

    def __init__(self, key_path: str | Path, create: bool = False, pin_dir: str | Path | None = None) -> None:
        self.key_path = Path(key_path).expanduser()
        self.create = create
        self._pin_dir = Path(pin_dir).expanduser() if pin_dir is not None else None

    # --- public API -----------------------------------------------------------------------------------------------

    @property
    def external(self) -> bool:
        """True when the key comes from one configured PEM file instead of the managed folder."""
        return self.key_path.is_file() or (not self.key_path.exists() and self.key_path.suffix in _PEM_SUFFIXES)

    @property
    def pin_dir(self) -> Path:
        """The folder holding the pinned public keys (``<version>.pub.pem``)."""
        if not self.external:
            return self.key_path
        return self._pin_dir or self.key_path.parent / "l07-pinned-keys"

    def sign(self, message: bytes) -> tuple[str, str]:
        """Sign ``message`` with the active key.

        Returns:
            ``(signature, key_version)``: base64 of the DER ECDSA signature, and the version that made it.

        Raises:
            L07Error: E7200 when the key cannot be read or created.
        """
        try:
            version, key = self._active_key()
            self._pin(version, key.public_key())
            self.pin_existing()
            der = key.sign(message, ec.ECDSA(hashes.SHA256()))
        except L07Error:
            raise
        except (OSError, ValueError, TypeError) as exc:
            raise L07Error(L07ErrorCode.MODEL_ARTIFACT_SIGNING_FAILED, f"cannot sign with the key at {self.key_path}: {exc}") from exc
        return base64.b64encode(der).decode("ascii"), version

    def verify(self, message: bytes, signature: str, key_version: str | None) -> None:
        """Check a signature made by ``sign`` against the pinned public key of ``key_version`` (no private key is read).

        Raises:
            L07Error: E7201 when the key version is unknown, retired or not pinned, or the signature does not match.
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
        public = self._pinned(key_version)
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
        self.pin_existing()
        ring = self._read_ring()
        number = max(int(k["version"][len(KEY_PREFIX):]) for k in ring["keys"]) + 1
        version = self._create_key(number)
        self._pin(version, self._load_private(version).public_key())
        ring = self._read_ring()
        ring["active"] = version
        self._write_ring(ring)
        log.info("signing key rotated", extra={"key_version": version})
        return next(k for k in self.list_keys() if k.version == version)

    def list_keys(self) -> list[SigningKeyInfo]:
        """Every key, newest first, with its status (read from the pinned public keys)."""
        active, _ = self._active_key()
        self.pin_existing()
        accepted = set(self._verifying_versions())
        out = []
        for entry in sorted(self._entries(), key=lambda e: e["version"], reverse=True):
            public = self._pinned(entry["version"])
            status = "active" if entry["version"] == active else ("previous" if entry["version"] in accepted else "retired")
            out.append(SigningKeyInfo(
                version=entry["version"], created_at=datetime.fromisoformat(entry["created_at"]), status=status,
                fingerprint=_fingerprint(public), public_key_pem=_public_pem(public),
            ))
        return out

    def public_key_pem(self, key_version: str) -> str:
        """The pinned PEM public key of one version (what L04 needs to verify before loading)."""
        return _public_pem(self._pinned(key_version))

    def pin_existing(self) -> list[str]:
        """Pin the public half of every private key present that has no pin yet (key folders made before pinning).

        Runs on the signing side only (it reads private keys); returns the versions pinned now. A missing key path
        pins nothing and creates nothing.
        """
        pinned: list[str] = []
        if self.external:
            if self.key_path.is_file():
                key = self._read_pem(self.key_path)
                if self._pin(_external_version(key), key.public_key()):
                    pinned.append(_external_version(key))
            return pinned
        for entry in self._entries():
            version = entry["version"]
            if not self._pin_path(version).exists() and (self.key_path / f"{version}.pem").exists():
                if self._pin(version, self._load_private(version).public_key()):
                    pinned.append(version)
        return pinned

    # --- internals ------------------------------------------------------------------------------------------------

    def _active_key(self) -> tuple[str, ec.EllipticCurvePrivateKey]:
        if self.external:
            key = self._read_pem(self.key_path)
            return _external_version(key), key
        if not (self.key_path / KEYRING_FILE).exists():
            if not self.create and not self.key_path.is_dir():
                # Fail closed: a configured key that is missing (unmounted volume, typo) must not turn into a new,
                # untrusted keyring whose signatures then look valid.
                raise L07Error(
                    L07ErrorCode.MODEL_ARTIFACT_SIGNING_FAILED,
                    f"the configured signing key path {self.key_path} does not exist; point signing_key_path at the "
                    f"key folder or PEM file (L07 creates a keyring by itself only at its default <home>/keys)",
                    path=str(self.key_path),
                )
            self._init_ring()
        version = self._active_version()
        return version, self._load_private(version)

    def _active_version(self) -> str:
        if self.external:
            entries = self._entries()
            return entries[0]["version"] if entries else ""
        return str(self._read_ring()["active"])

    def _entries(self) -> list[dict]:
        """Known versions with creation times, read without any private key (external: the pinned keys, newest first)."""
        if self.external:
            pins = sorted(self.pin_dir.glob(f"{EXTERNAL_PREFIX}*{PIN_SUFFIX}"), key=lambda p: p.stat().st_mtime,
                          reverse=True) if self.pin_dir.is_dir() else []
            return [{"version": p.name[: -len(PIN_SUFFIX)],
                     "created_at": datetime.fromtimestamp(p.stat().st_mtime).astimezone().isoformat()} for p in pins]
        if not (self.key_path / KEYRING_FILE).exists():
            return []
        return list(self._read_ring()["keys"])

    def _all_versions(self) -> list[str]:
        return [e["version"] for e in self._entries()]

    def _verifying_versions(self) -> list[str]:
        """The active version plus the previous ones still accepted, newest first."""
        if self.external:  # rotated outside L07: the newest pinned key and its 2 predecessors, by pin time
            return self._all_versions()[: VERIFY_PREVIOUS_KEYS + 1]
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

    def _pin_path(self, version: str) -> Path:
        return self.pin_dir / f"{version}{PIN_SUFFIX}"

    def _pin(self, version: str, public: ec.EllipticCurvePublicKey) -> bool:
        """Pin ``public`` as ``version``'s key; True when written now. A different existing pin is an E7200 refusal."""
        path = self._pin_path(version)
        pem = _public_pem(public).encode("ascii")
        if path.exists():
            if path.read_bytes() != pem:
                raise L07Error(
                    L07ErrorCode.MODEL_ARTIFACT_SIGNING_FAILED,
                    f"the private key of {version} does not match its pinned public key {path}; refusing to sign "
                    f"(the key file was replaced: restore it, or rotate to a new key)", key_version=version,
                )
            return False
        private_dir(path.parent)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return self._pin(version, public)  # pinned concurrently: it must be the same key
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        return True

    def _pinned(self, version: str) -> ec.EllipticCurvePublicKey:
        """The pinned public key of ``version``. Raises E7201 when none is pinned or it is unreadable."""
        path = self._pin_path(version)
        try:
            public = serialization.load_pem_public_key(path.read_bytes())
        except (OSError, ValueError, TypeError) as exc:
            raise L07Error(
                L07ErrorCode.MODEL_SIGNATURE_VERIFICATION_FAILED,
                f"no pinned public key for signing key {version} ({path}); signatures verify only with pinned keys "
                f"(keys made before pinning are pinned by `l07 keys list` or the next registration)",
                key_version=version,
            ) from exc
        if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name != "secp256r1":
            raise L07Error(L07ErrorCode.MODEL_SIGNATURE_VERIFICATION_FAILED, f"pinned key {path} is not ECDSA P-256")
        if version.startswith(EXTERNAL_PREFIX) and _external_version_of(public) != version:
            raise L07Error(L07ErrorCode.MODEL_SIGNATURE_VERIFICATION_FAILED,
                           f"pinned key {path} does not have the fingerprint its name says", key_version=version)
        return public

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
        private_dir(self.key_path)  # and the L07 home above it, when this is the first thing made there
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
    return _external_version_of(key.public_key())


def _external_version_of(public: ec.EllipticCurvePublicKey) -> str:
    return f"{EXTERNAL_PREFIX}{_fingerprint(public)[:12]}"


def keyring_for(settings: Any) -> SigningKeyring:
    """The keyring ``settings`` name: ``signing_key_path`` (default ``<home>/keys``, the only path created on first
    use); an external PEM's public keys are pinned in ``<home>/keys/pinned``."""
    default = Path(settings.home).expanduser() / "keys"
    path = Path(settings.signing_key_path or default).expanduser()
    return SigningKeyring(path, create=path == default, pin_dir=default / "pinned")
