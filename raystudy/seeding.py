"""One way to derive seeds, so every stage agrees: same parts, same seed, on any machine."""
from __future__ import annotations

import hashlib
import json


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from a SHA-256 of ``parts`` (JSON with sorted keys, so dict order and the
    process's string-hash salt do not matter). Use it to seed a private ``torch.Generator``."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") & (2**63 - 1)
