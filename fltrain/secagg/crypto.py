"""The cryptographic primitives of secure aggregation, all from the ``cryptography`` package (no home-made cipher).

- Key agreement: X25519 (RFC 7748). Each client holds two key pairs per session, one whose agreed secrets key the
  AEAD that carries Shamir shares, one whose agreed secrets seed the pairwise masks (Bonawitz et al., CCS 2017,
  §4: ``c`` and ``s`` keys).
- Key derivation: HKDF-SHA256 (RFC 5869) with the session id as salt and a label naming the key's purpose and the
  two client ids, so no key is ever used for two purposes or in two sessions.
- Authenticated encryption: AES-256-GCM with a random 96-bit nonce and associated data that binds session, stage,
  sender and recipient; any change of ciphertext, nonce or context fails authentication (:class:`IntegrityError`).
- PRG: AES-256-CTR keystream (NIST SP 800-38A) from a 32-byte seed, read as ring elements. Each seed keys
  exactly one stream, so the fixed all-zero counter block is never reused under one key.
- Signatures: Ed25519 (RFC 8032), from each client's long-term identity key, whose public half the other parties
  know from the PKI (Bonawitz et al., CCS 2017, §4, active-adversary variant). Every message a client sends is
  signed, so the advertised keys and the survivor set it vouches for can be checked by everyone.
"""

from __future__ import annotations

import os

import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .encoding import Ring
from .errors import IntegrityError

__all__ = [
    "KEY_BYTES",
    "NONCE_BYTES",
    "generate_private_key",
    "public_key",
    "agree",
    "seal",
    "open_sealed",
    "expand_mask",
    "random_seed",
    "SIGNATURE_BYTES",
    "generate_signing_key",
    "verifying_key",
    "sign",
    "verify",
]

KEY_BYTES = 32
NONCE_BYTES = 12
SIGNATURE_BYTES = 64


def random_seed() -> bytes:
    """32 bytes from the OS CSPRNG (a self-mask seed)."""
    return os.urandom(KEY_BYTES)


def generate_private_key() -> bytes:
    """A fresh X25519 private key, as its 32 raw bytes (the form in which it is secret-shared)."""
    return X25519PrivateKey.generate().private_bytes_raw()


def public_key(private: bytes) -> bytes:
    """The 32-byte X25519 public key of a raw private key."""
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def agree(private: bytes, peer_public: bytes, *, salt: bytes, label: bytes) -> bytes:
    """X25519 shared secret of ``private`` and ``peer_public``, through HKDF-SHA256(salt, info=label), 32 bytes.

    Symmetric: ``agree(a, B) == agree(b, A)``. A low-order peer key (an all-zero shared secret) is rejected as
    :class:`IntegrityError`.
    """
    try:
        shared = X25519PrivateKey.from_private_bytes(private).exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:
        raise IntegrityError(f"X25519 key agreement failed: {exc}") from exc
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=label).derive(shared)


def seal(key: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    """AES-256-GCM encryption; returns ``nonce || ciphertext || tag``."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated_data)


def open_sealed(key: bytes, sealed: bytes, associated_data: bytes) -> bytes:
    """Inverse of :func:`seal`; raises :class:`IntegrityError` if anything was altered or the context differs."""
    if len(sealed) < NONCE_BYTES + 16:
        raise IntegrityError("ciphertext too short to be authentic")
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], associated_data)
    except InvalidTag as exc:
        raise IntegrityError("AEAD authentication failed: ciphertext or its context was altered") from exc


def expand_mask(seed: bytes, ring: Ring, dim: int) -> np.ndarray:
    """``dim`` pseudorandom elements of ``ring``: the AES-256-CTR keystream of key ``seed`` (counter from 0)."""
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    return ring.from_stream(encryptor.update(bytes(dim * ring.width)), dim)


def generate_signing_key() -> bytes:
    """A fresh Ed25519 identity (signing) key, as its 32 raw bytes."""
    return Ed25519PrivateKey.generate().private_bytes_raw()


def verifying_key(signing_key: bytes) -> bytes:
    """The 32-byte Ed25519 public key of a raw signing key (what the PKI publishes for the client)."""
    return Ed25519PrivateKey.from_private_bytes(signing_key).public_key().public_bytes_raw()


def sign(signing_key: bytes, message: bytes) -> bytes:
    """Ed25519 signature (64 bytes) of ``message``."""
    return Ed25519PrivateKey.from_private_bytes(signing_key).sign(message)


def verify(public: bytes, signature: bytes, message: bytes) -> bool:
    """Whether ``signature`` is a valid Ed25519 signature of ``message`` under ``public``; a malformed key or
    signature is simply invalid (``False``), never an exception."""
    if len(public) != KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True
