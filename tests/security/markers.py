"""How a secret could show up in bytes it leaked into: the forms the security tests scan for."""

from __future__ import annotations

import base64


def encodings(secret: bytes) -> set[bytes]:
    """`secret` raw, as hex, and as the part of its base64 only it determines.

    Base64 of the secret embedded at any alignment (0-2 bytes before it, standard
    or URL-safe alphabet): the characters that mix in neighbouring bytes or the
    ``=`` tail are dropped. Forms shorter than 12 bytes would match by chance.
    """
    forms = {secret, secret.hex().encode(), secret.hex().upper().encode()}
    for pad in range(3):
        for enc in (base64.b64encode, base64.urlsafe_b64encode):
            text = enc(b"\x00" * pad + secret)
            lead, end = (8 * pad + 5) // 6, (8 * (pad + len(secret))) // 6
            forms.add(text[lead:end])
    return {f for f in forms if len(f) >= 12}
