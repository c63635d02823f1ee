"""Where ``sdcompose ui`` and ``sdcompose serve`` may listen: loopback unless told otherwise, never without a
password off it. (Both run ``sdcompose.server``'s one app and security layer.)"""
from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

from sdcompose.errors import ValidationError

LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


def parse_auth(value: str | None) -> list[tuple[str, str]] | None:
    """``user:password``, or ``@FILE`` with one ``user:password`` per line (keeps the password out of ``ps``)."""
    if value is None:
        return None
    lines = [value]
    if value.startswith("@"):
        try:
            lines = Path(value[1:]).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ValidationError(f"--auth {value}: cannot read the file ({exc.strerror})") from None
    pairs = []
    for line in filter(None, (line.strip() for line in lines)):
        user, sep, password = line.partition(":")
        if not sep or not user or not password:
            raise ValidationError("--auth must be user:password (or @FILE with one user:password per line)")
        pairs.append((user, password))
    if not pairs:
        raise ValidationError(f"--auth {value}: no user:password in it")
    return pairs


def check_bind(host: str, auth: list | None, insecure_no_auth: bool) -> None:
    """Refuse an address other machines can reach without a password, unless explicitly told to (with a warning)."""
    if auth is not None or is_loopback(host):
        return
    if not insecure_no_auth:
        raise ValidationError(f"refusing to serve on {host} without a password: anyone who can reach this machine "
                              "could use it; add --auth user:password (or --insecure-no-auth if you mean it)")
    print(f"sdcompose: warning: serving on {host} with no password (--insecure-no-auth): anyone who can reach "
          "this machine can use it and its GPU", file=sys.stderr)
