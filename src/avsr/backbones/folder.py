"""When is a backbone folder complete, and when is it ours to replace: one protocol for all.

Every backbone folder (the converted Whisper, the small LM, the lip encoder) is written into a
temporary sibling that is renamed into place at the end (`avsr.io.atomic_folder`), and the last
file written inside it is a JSON *marker*. So:

* complete = the marker exists, holds a JSON object carrying the folder's identity (e.g. its
  format), and, where the caller gives a fingerprint, every fingerprint field has the given
  value (a changed setting or source means: redo it);
* ours = the marker exists with the identity, whatever the fingerprint: an older result of
  ours, safe to replace; anything else that exists (a file, a non-empty folder) is refused.

Each backbone keeps its own marker file name and content (existing folders stay complete).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from avsr.errors import AvsrError
from avsr.io import atomic_folder, check_output


@dataclass(frozen=True)
class BackboneFolder:
    """The marker protocol of one kind of backbone folder."""

    marker: str  # file name inside the folder, written last
    what: str  # "a finished Whisper conversion": names the kind in the refusal message
    identity: dict = field(default_factory=dict)  # fields every marker of ours has, whatever its version
    error: type[Exception] = AvsrError  # raised when an existing folder is not ours to replace

    def read(self, folder: str | Path) -> dict | None:
        """The marker's content when the folder is ours (see the module docstring), else None."""
        try:
            content = json.loads((Path(folder) / self.marker).read_text("utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(content, dict) or any(content.get(k) != v for k, v in self.identity.items()):
            return None
        return content

    def is_ours(self, folder: str | Path) -> bool:
        return self.read(folder) is not None

    def is_complete(self, folder: str | Path, fingerprint: dict | None = None) -> bool:
        """True when the folder is ours and its marker has every field of `fingerprint`."""
        content = self.read(folder)
        return content is not None and all(content.get(k) == v for k, v in (fingerprint or {}).items())

    def check_replaceable(self, folder: str | Path, inputs=()) -> None:
        """Refuse (self.error) an existing folder that is neither absent, empty nor ours, and
        whatever else avsr.io's one rule for outputs refuses (the root, home or working folder,
        a checkpoint, an input of the command or a folder holding one, a name too long)."""
        check_output(folder, inputs=inputs, replace=True, folder=True, mine=self.is_ours, what=self.what,
                     error=self.error)

    def write_marker(self, tmp: str | Path, content: dict) -> None:
        """Write the marker (identity, then `content`) into the folder being built: its last file."""
        text = json.dumps({**self.identity, **content}, indent=2) + "\n"
        (Path(tmp) / self.marker).write_text(text, "utf-8")

    @contextmanager
    def writing(self, folder: str | Path) -> Iterator[Path]:
        """Yield a temporary sibling of `folder` to fill; it replaces `folder` only if the body
        ended by writing the marker (`write_marker`, or a folder format's own writer)."""
        with atomic_folder(folder) as tmp:
            yield tmp
            if not self.is_ours(tmp):
                raise RuntimeError(f"{self.marker} was not written: {folder} would never count as complete")
