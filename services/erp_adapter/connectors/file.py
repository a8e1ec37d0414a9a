"""The file-exchange connector: one confirmation file per confirmation in the export folder.

Files are named `<UTC time>-<seq>-<event id>.<json|csv>`, so the ERP imports them in order by
name, and written atomically: a hidden temp file in the same folder (`.<name>.tmp`), fsync,
rename, fsync of the folder — a reader never sees a partial file, and a crash leaves either
nothing or the whole file. A resend after a crash writes the same name with the same content.

Acknowledgements come back as files in the acknowledgement folder: JSON with `idempotency_key`
(or `event_id`), or any file whose name holds the event id; each is matched to its
confirmation and moved into `processed/` there.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.erp_adapter.connectors import Ack

if TYPE_CHECKING:
    from services.erp_adapter.config import Settings
    from services.erp_adapter.confirmations import Confirmation

NAME = "file"
CSV_COLUMNS = ("idempotency_key", "confirmation", "order_id", "dispatch_id",
               "dispatch_version", "carrier", "tracking_number", "line_no", "shipped_quantity",
               "backorder_quantity", "occurred_at")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)


@dataclass(frozen=True)
class Acknowledgement:
    event_id: uuid.UUID
    answer: dict[str, Any]
    path: Path


def render(document: dict[str, Any], fmt: str) -> bytes:
    """The file's content: the document as JSON, or as CSV with one row per line."""
    if fmt == "json":
        return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for line in document["lines"] or [{}]:
        writer.writerow([document.get("idempotency_key"), document.get("confirmation"),
                         document.get("order_id"), document.get("dispatch_id"),
                         document.get("dispatch_version"), document.get("carrier") or "",
                         document.get("tracking_number") or "", line.get("line_no", ""),
                         line.get("shipped_quantity", ""), line.get("backorder_quantity", ""),
                         document.get("occurred_at")])
    return out.getvalue().encode()


def write_atomically(folder: Path, name: str, content: bytes) -> Path:
    """Temp file in the same folder, fsync, rename over `name`, fsync the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    final, temp = folder / name, folder / f".{name}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, final)
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)
    return final


class FileConnector:
    name = NAME

    def __init__(self, export_dir: Path, ack_dir: Path | None, fmt: str = "json") -> None:
        self.export_dir, self.ack_dir, self.fmt = export_dir, ack_dir, fmt

    def file_name(self, stem: str) -> str:
        return f"{stem}.{self.fmt}"

    def describe(self, confirmation: Confirmation) -> dict[str, Any]:
        return {"folder": str(self.export_dir), "format": self.fmt}

    async def send(self, confirmation: Confirmation, *, stem: str) -> Ack:
        content = render(confirmation.document, self.fmt)
        path = await asyncio.to_thread(write_atomically, self.export_dir, self.file_name(stem),
                                       content)
        return Ack(acknowledged=False, response={"file": path.name, "bytes": len(content)})

    def acknowledgements(self) -> list[Acknowledgement]:
        """The acknowledgement files waiting in the folder, oldest name first."""
        if self.ack_dir is None or not self.ack_dir.is_dir():
            return []
        found = []
        for path in sorted(self.ack_dir.iterdir()):
            if not path.is_file() or path.name.startswith("."):
                continue
            answer: dict[str, Any] = {"file": path.name}
            text = path.read_text(encoding="utf-8", errors="replace")
            try:
                body = json.loads(text)
                if isinstance(body, dict):
                    answer.update(body)
            except ValueError:
                answer["content"] = text[:2000]
            key = answer.get("idempotency_key") or answer.get("event_id")
            match = _UUID.search(str(key)) if key else _UUID.search(path.name)
            if match:
                found.append(Acknowledgement(uuid.UUID(match.group(0)), answer, path))
        return found

    def done(self, ack: Acknowledgement) -> None:
        """Move a matched acknowledgement file out of the way, into `processed/`."""
        processed = ack.path.parent / "processed"
        processed.mkdir(exist_ok=True)
        os.replace(ack.path, processed / ack.path.name)


def build(settings: Settings) -> FileConnector:
    return FileConnector(settings.erp_export_dir, settings.erp_ack_dir,
                         settings.erp_export_format)
