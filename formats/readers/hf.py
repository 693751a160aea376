"""``hf``: any dataset ``datasets.load_dataset`` opens, read through one of the record readers.

``INPUT`` is a local dataset directory (a folder of data files, or one written by ``save_to_disk``), a data
file (``.parquet``, ``.arrow``, ``.csv``, ``.tsv``, ``.json``, ``.jsonl``), or a hub name where the hub is
reachable. Rows are streamed (``streaming=True``), never loaded whole. Reader options:

* ``split`` (default ``train``, else the first split), ``config`` (the dataset's configuration name);
* ``columns``: a mapping from the keys a reader expects to this dataset's columns, ``KEY=COLUMN`` pairs separated
  by commas, e.g. ``columns=chapter=text,summary_text=summary``; unmapped columns keep their names;
* ``as``: the reader the rows are in (``sharegpt``, ``messages``, ``coqa``, ``booksum``, ``hints``); without it
  the reader is picked from the first row's keys.

All other options go to that reader (``prompt``, ``context_window``...), and so does clean-up and rejection; a
row's source is ``NAME[SPLIT]#INDEX``. ``stats`` is that reader's.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from itertools import chain
from pathlib import Path
from typing import Any

from distill.conversation import Record
from distill.errors import InputError, UsageError

from .base import READERS, Reader
from .records import RecordReader

TARGETS = ("sharegpt", "messages", "coqa", "booksum", "hints")
FILE_BUILDERS = {
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".csv": "csv",
    ".tsv": "csv",
    ".json": "json",
    ".jsonl": "json",
}


@READERS.register("hf")
class HFReader(Reader):
    """Reads a ``datasets`` dataset with a column mapping onto one of the record readers."""

    name = "hf"

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self.columns = parse_columns(self.options.extra.get("columns"))
        self.target: RecordReader | None = None
        target = self.options.extra.get("as")
        if target is not None:
            self.target = _target_reader(str(target), self.options)

    @classmethod
    def sniff(cls, path: Path, head: bytes) -> bool:
        path = Path(path)
        return path.is_dir() or head.startswith(b"PAR1") or path.suffix.lower() in (".arrow", ".csv", ".tsv")

    def read(self, path: Path) -> Iterator[Record]:
        split, rows = open_rows(path, self.options.extra)
        rows = (_renamed(row, self.columns) for row in rows)
        first = next(rows, None)
        if first is None:
            return
        if self.target is None:
            self.target = _target_reader(_guess_target(first), self.options)
        else:
            self.target.check_options()
        self.stats = self.target.stats  # the same dict: it fills as rows are read
        name = Path(str(path)).name
        for index, row in enumerate(chain([first], rows)):
            yield self.target.record(f"{name}[{split}]#{index}", row)


def parse_columns(value: Any) -> dict[str, str]:
    """``{reader key: dataset column}`` from ``KEY=COLUMN,KEY=COLUMN`` (or a mapping already)."""
    if value is None or value == "":
        return {}
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items()}
    mapping = {}
    for pair in str(value).split(","):
        key, sep, column = pair.partition("=")
        if not sep or not key.strip() or not column.strip():
            raise UsageError(f"--reader-opt columns={value}: write KEY=COLUMN pairs separated by commas")
        mapping[key.strip()] = column.strip()
    return mapping


def open_rows(path: Path, extra: Mapping[str, Any]) -> tuple[str, Iterable[dict[str, Any]]]:
    """``(split name, streamed rows)`` of the dataset at ``path``."""
    import datasets  # slow to import: only when an hf dataset is read

    path_str = str(path)
    local = Path(path_str)
    split = extra.get("split")
    try:
        if local.is_dir() and ((local / "state.json").exists() or (local / "dataset_dict.json").exists()):
            loaded: Any = datasets.load_from_disk(path_str)
        elif local.is_file():
            builder = FILE_BUILDERS.get(local.suffix.lower())
            if builder is None:
                raise InputError(f"{path}: hf reads {', '.join(FILE_BUILDERS)} files or dataset folders")
            options = {"delimiter": "\t"} if local.suffix.lower() == ".tsv" else {}
            loaded = datasets.load_dataset(builder, data_files=path_str, streaming=True, **options)
        else:
            loaded = datasets.load_dataset(path_str, name=extra.get("config"), streaming=True)
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as e:
        raise InputError(f"datasets cannot open {path}: {e}") from None
    if isinstance(loaded, datasets.DatasetDict | datasets.IterableDatasetDict):
        names = list(loaded)
        chosen = split or ("train" if "train" in names else names[0])
        if chosen not in loaded:
            raise UsageError(f"--reader-opt split={chosen}: {path} has the splits {', '.join(names)}")
        loaded, split = loaded[chosen], chosen
    if isinstance(loaded, datasets.Dataset):
        loaded = loaded.to_iterable_dataset()
    return str(split or "train"), iter(loaded)


def _renamed(row: Mapping[str, Any], columns: Mapping[str, str]) -> dict[str, Any]:
    out = dict(row)
    for key, column in columns.items():
        if column in row:
            out[key] = row[column]
    return out


def _guess_target(row: Mapping[str, Any]) -> str:
    matches = [name for name in TARGETS if READERS.get(name).claims(row)]  # type: ignore[attr-defined]
    if len(matches) == 1:
        return matches[0]
    columns = ", ".join(sorted(row))
    if not matches:
        raise UsageError(
            f"cannot tell which format the dataset's rows (columns: {columns}) are in; pass --reader-opt as=NAME "
            f"(one of {', '.join(TARGETS)}) and --reader-opt columns=KEY=COLUMN,... to map its columns"
        )
    raise UsageError(
        f"the dataset's rows (columns: {columns}) could be {' or '.join(matches)}; pass --reader-opt as=NAME"
    )


def _target_reader(name: str, options: Any) -> RecordReader:
    if name not in TARGETS:
        raise UsageError(f"--reader-opt as={name} is not valid; use one of: {', '.join(TARGETS)}")
    return READERS.get(name)(options)  # type: ignore[return-value]
