#!/usr/bin/env python3
"""Writes docs/vectors/sealed-file-v1.json: sealed files (docs/FORMATS.md "Sealed
files", format v1) made by this independent implementation (Python `cryptography`'s
AESGCM), with a fixed DEK and nonce prefix. tests/unit/test_seal.c checks kmsctl's
C implementation (kms/base/seal.c) against them. Run from the repository root."""
import json
import re
import struct

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

DEK = bytes(range(0x80, 0xA0))
PREFIX = bytes.fromhex("a0a1a2a3a4a5a6")
WRAPPED = "vault:v1:oKGio6SlpqeoqaqrlnkIRCCldpJWV6eXQjHh/0Ul8St/+r5O9ggz7bavXvk="


def canonical(ctx):
    """Compact, members sorted by key, non-ASCII as \\uXXXX with upper-case hex (the
    form jansson writes). (The vectors hold no backslash, so the simple re is right.)"""
    s = json.dumps(ctx, separators=(",", ":"), sort_keys=True, ensure_ascii=True)
    return re.sub(r"\\u([0-9a-f]{4})", lambda m: "\\u" + m.group(1).upper(), s)


def header(tenant, key, chunk_size, ctx):
    t, k, w, c = tenant.encode(), key.encode(), WRAPPED.encode(), canonical(ctx).encode()
    rest = struct.pack(">I", chunk_size) + PREFIX + b"\x00"
    rest += struct.pack(">H", len(t)) + t + struct.pack(">H", len(k)) + k
    rest += struct.pack(">H", len(w)) + w + struct.pack(">I", len(c)) + c
    total = 12 + len(rest)
    return b"KMSSEAL\x01" + struct.pack(">I", total) + rest


def seal(hdr, chunk_size, pt):
    g = AESGCM(DEK)
    chunks = [pt[i:i + chunk_size] for i in range(0, len(pt), chunk_size)] or [b""]
    out = hdr
    for i, c in enumerate(chunks):
        last = i == len(chunks) - 1
        nonce = PREFIX + struct.pack(">I", i) + (b"\x01" if last else b"\x00")
        out += g.encrypt(nonce, c, hdr)
    return out


CASES = [
    ("empty file: one final chunk of 0 bytes", "demo", "patient-records", 16, {}, b""),
    ("one byte", "demo", "patient-records", 16, {"purpose": "treatment"}, b"\x42"),
    ("two full chunks and a short final one", "demo", "patient-records", 16,
     {"record": "mrn-0001", "purpose": "treatment"}, b"patient-42 lab result: HbA1c 6.1%, 2026-03-01"[:40]),
    ("a multiple of the chunk size: the final chunk is full", "cardiology", "scans", 16,
     {"caf\u00e9": "\u00fcber"}, bytes(range(32))),
    ("default chunk size, 100 bytes", "demo", "patient-records", 65536, {}, b"x" * 100),
]

vectors = []
for desc, tenant, key, cs, ctx, pt in CASES:
    hdr = header(tenant, key, cs, ctx)
    vectors.append({
        "description": desc, "tenant": tenant, "key": key, "chunk_size": cs,
        "encryption_context": ctx, "context_canonical": canonical(ctx),
        "plaintext": pt.hex(), "header": hdr.hex(), "sealed": seal(hdr, cs, pt).hex(),
    })

doc = {
    "format": "kmsd sealed file, version 1 (docs/FORMATS.md \"Sealed files\")",
    "generator": "docs/vectors/gen-sealed-file-v1.py (Python cryptography AESGCM)",
    "dek": DEK.hex(), "nonce_prefix": PREFIX.hex(), "wrapped_dek": WRAPPED,
    "vectors": vectors,
}
with open("docs/vectors/sealed-file-v1.json", "w") as f:
    json.dump(doc, f, indent=2, ensure_ascii=True)
    f.write("\n")
