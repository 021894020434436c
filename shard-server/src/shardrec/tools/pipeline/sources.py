"""Where interactions come from: a MovieLens folder (downloaded if missing, when allowed) or a CSV."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from shardrec.tools.pipeline.interactions import InteractionsError
from shardrec.tools.pipeline.movielens import (
    LoadedInteractions,
    MovieLensError,
    expected_checksums,
    load_interactions_file,
    load_movielens,
)


class SourceError(ValueError):
    """The interactions source cannot be loaded; the message names the path and the problem."""


@dataclass(frozen=True)
class DataSource:
    kind: Literal["movielens", "csv"]
    path: Path

    def load(self, *, download: bool = False, progress: bool = True) -> LoadedInteractions:
        try:
            if self.kind == "csv":
                return load_interactions_file(self.path)
            if not self.path.exists() and download and expected_checksums(self.path) is not None:
                from shardrec.tools.pipeline.download import download_movielens

                download_movielens(self.path, progress=progress)
            return load_movielens(self.path)
        except (MovieLensError, InteractionsError) as exc:
            raise SourceError(str(exc)) from exc

    @classmethod
    def from_metadata(cls, source: Any) -> DataSource:
        """The source recorded in an embeddings directory's metadata.json."""
        if not isinstance(source, dict) or source.get("kind") not in ("movielens", "csv"):
            raise SourceError(
                "metadata.json records no interactions source; pass --movielens or --interactions"
            )
        return cls(kind=source["kind"], path=Path(str(source["path"])))
