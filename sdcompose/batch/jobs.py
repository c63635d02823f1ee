"""The lines of a batch file: each one a request in the request schema's JSON, with an optional ``id``."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdcompose.errors import SdcomposeError, ValidationError
from sdcompose.request import GenerationRequest, validate
from sdcompose.request_json import request_from_json as from_json

ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
MAX_LINE = 1 << 20  # a request line; images are given as paths, never inline


@dataclass(frozen=True)
class Job:
    line: int  # 1-based line number in the file
    id: str  # the output is DIR/<id>.png (DIR/<id>-1.png... for a batch of several)
    request: GenerationRequest


@dataclass(frozen=True)
class BadLine:
    line: int
    id: str | None
    reason: str


def read_jobs(path: str | Path) -> list[Job | BadLine]:
    """Every non-blank line of ``path`` as a Job or, when it cannot be run, a BadLine with one sentence why.

    Relative image paths are read from the batch file's folder. Without an ``id`` a line is named by a
    hash of its request, so a rerun recognises it wherever it moved in the file.
    """
    path = Path(path)
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ValidationError(f"cannot read {path}: {exc.strerror or exc}") from None
    out: list[Job | BadLine] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.split(b"\n"), start=1):
        if not raw.strip():
            continue
        item = parse_line(raw, number, path.parent)
        if isinstance(item, Job):
            if item.id in seen:
                item = BadLine(number, item.id, f"id {item.id!r} is already used by line {seen[item.id]}"
                               " (a line without an id is named by its request: give repeated requests ids)")
            else:
                seen[item.id] = number
        out.append(item)
    return out


def parse_line(raw: bytes, number: int, folder: Path) -> Job | BadLine:
    if len(raw) > MAX_LINE:
        return BadLine(number, None, f"the line is {len(raw)} bytes; the limit is {MAX_LINE} (give images as paths)")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return BadLine(number, None, f"not valid JSON ({str(exc).splitlines()[0][:120]})")
    if not isinstance(data, dict):
        return BadLine(number, None, f"expected a JSON object (a request), got {type(data).__name__}")
    job_id = data.pop("id", None)
    if job_id is not None and (not isinstance(job_id, str) or not ID.fullmatch(job_id)):
        return BadLine(number, None, f"id {str(job_id)[:60]!r} must be 1-100 letters, digits, '.', '_' or '-', "
                                     "starting with a letter or digit")
    try:
        request = validate(request_from_json(data, folder))
    except SdcomposeError as exc:
        return BadLine(number, job_id, str(exc))
    return Job(number, job_id or default_id(data), request)


def default_id(data: dict[str, Any]) -> str:
    return "job-" + hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def request_from_json(data: dict[str, Any], folder: Path) -> GenerationRequest:
    """A GenerationRequest from a line's JSON (``sdcompose.request_json``); image paths relative to ``folder``."""
    return from_json(data, lambda value, name: _path(value, folder, name))


def _path(value: Any, folder: Path, name: str) -> Any:
    """A relative image path is read from the batch file's folder; JSON data (a pose) is passed as it is."""
    if value is None or isinstance(value, (dict, list)):
        return value
    if not isinstance(value, str):
        raise ValidationError(f"{name} must be a file path, got {type(value).__name__}")
    return str(folder / value) if not Path(value).is_absolute() else value
