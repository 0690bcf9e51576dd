"""Video lists of the supported data sets: which file, which class, which split.

- ``ucf101``: UCF101's layout. Split files ``classInd.txt``, ``trainlist0N.txt`` ("Class/v_..avi 37"),
  ``testlist0N.txt`` ("Class/v_..avi") in ``ucfTrainTestlist/`` or ``splits/`` (or the root); videos in
  ``UCF-101/`` or ``videos/`` (or the root). The built-in synthetic set (data_prep.synthetic) uses it too.
- ``hmdb51``: HMDB51's layout. Split files ``<class>_test_split<N>.txt`` ("video.avi 1", 1 = train,
  2 = test, 0 = unused) in ``testTrainMulti_7030_splits/`` or ``splits/`` (or the root); videos in
  ``<class>/`` folders under ``hmdb51_org/``, ``videos/`` or the root. Classes in alphabetical order.
- ``kinetics``: Kinetics-400/600/700. The official annotation CSVs (header ``label,youtube_id,time_start,
  time_end,split``, further columns ignored): ``train.csv`` and ``validate.csv`` (or ``val.csv``, or any
  ``*train*.csv`` / ``*val*.csv`` such as ``kinetics_train.csv``) in ``annotations/`` or the root. Videos named
  ``{youtube_id}_{time_start:06d}_{time_end:06d}.<ext>`` anywhere under the root: flat, or in per-class folders
  (the label as written, or with spaces as underscores), or under ``train/`` / ``val(idate)/``. The validate
  list is the test split. Classes: the train list's labels, alphabetical (label order of the released code).
  Kinetics always has missing and broken downloads, so its records always carry their problem (never raised):
  the build rejects them with the reason and counts them.
- ``folder``: one sub-folder per class (alphabetical order = label order) of video files; a deterministic
  split: in each class's name-sorted list, every 5th video (offset by split_id - 1) is a test video.

Bad input is one clear :class:`DataSourceError` naming the file. With ``skip_bad=True`` the problem is
instead attached to the record (``Record.problem``) so that the build rejects that video and records why.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from pathlib import Path

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".webm", ".mov", ".mpg", ".mpeg", ".m4v")

WHERE_TO_GET = {
    "ucf101": "UCF101: download UCF101.rar and the 'Train/Test Splits for Action Recognition' zip from "
    "https://www.crcv.ucf.edu/data/UCF101.php and extract both into one folder (UCF-101/, ucfTrainTestlist/)",
    "hmdb51": "HMDB51: download hmdb51_org.rar and test_train_splits.rar from "
    "https://serre-lab.clps.brown.edu/resource/hmdb-a-large-human-motion-database/ and extract them into one "
    "folder (one sub-folder per class with its .avi files, and testTrainMulti_7030_splits/)",
    "folder": "folder: a folder with one sub-folder per class holding that class's video files",
    "kinetics": "Kinetics-400/600/700: the annotation CSVs (train.csv, validate.csv) from "
    "https://github.com/cvdfoundation/kinetics-dataset (or DeepMind's kinetics_*.csv) in <root>/annotations/, "
    "and the downloaded clips {youtube_id}_{time_start:06d}_{time_end:06d}.mp4 under <root> (flat or in "
    "per-class folders)",
}

FOLDER_FOLDS = 5


class Source(str, enum.Enum):
    ucf101 = "ucf101"
    hmdb51 = "hmdb51"
    folder = "folder"
    kinetics = "kinetics"


class DataSourceError(ValueError):
    """Bad or missing input data; the message names the file and, where useful, where to get the data."""


@dataclass(frozen=True)
class Record:
    """One video of a data set.

    path: the video file; label: 0-based class index; split: "train" | "test"; video_id: the path relative
    to the videos folder without extension (unique in the data set); problem: why this video cannot be
    used (only with skip_bad; the build rejects it with this reason).
    """

    path: Path
    label: int
    class_name: str
    split: str
    video_id: str
    problem: str | None = None


def _require_root(root: str | Path | None, source: str) -> Path:
    if root is None or str(root) == "":
        raise DataSourceError(f"no --root given. {WHERE_TO_GET[source]}")
    r = Path(root)
    if not r.is_dir():
        raise DataSourceError(f"data root {r} does not exist or is not a folder. {WHERE_TO_GET[source]}")
    return r


def _first_dir(root: Path, names: tuple[str, ...], must_contain: str | None = None) -> Path | None:
    for name in names:
        d = root / name if name else root
        if d.is_dir() and (must_contain is None or any(d.glob(must_contain))):
            return d
    return None


def _read_lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, stripped line) of the non-empty lines of a text file."""
    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except (OSError, UnicodeDecodeError) as e:
        raise DataSourceError(f"{path}: cannot read split file: {e}") from e
    return [(i + 1, ln.strip()) for i, ln in enumerate(text.splitlines()) if ln.strip()]


def _video_problem(path: Path) -> str | None:
    """A cheap check before decoding: the file exists and is not empty."""
    if not path.is_file():
        return "file not found"
    if path.stat().st_size == 0:
        return "zero-length file"
    return None


def _record(path, label, class_name, split, video_id, problem, where: str, skip_bad: bool) -> Record:
    if problem is not None and not skip_bad:
        raise DataSourceError(f"{path}: {problem} ({where}); use --skip-bad to reject such videos instead")
    return Record(Path(path), label, class_name, split, video_id, problem)


# --------------------------------------------------------------------------------------------- UCF101
def _ucf_classes(class_ind: Path) -> list[str]:
    classes: dict[int, str] = {}
    for lineno, line in _read_lines(class_ind):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise DataSourceError(f"{class_ind}:{lineno}: expected '<number> <ClassName>', got {line!r}")
        classes[int(parts[0])] = parts[1]
    if not classes or sorted(classes) != list(range(1, len(classes) + 1)):
        raise DataSourceError(f"{class_ind}: class numbers must run 1..N without gaps")
    return [classes[i] for i in range(1, len(classes) + 1)]


def load_ucf101(
    root: str | Path, split_id: int = 1, skip_bad: bool = False
) -> tuple[list[Record], list[str]]:
    root = _require_root(root, "ucf101")
    split_dir = _first_dir(root, ("ucfTrainTestlist", "splits", ""), "classInd.txt")
    if split_dir is None:
        raise DataSourceError(
            f"{root}: no classInd.txt in ucfTrainTestlist/, splits/ or the root. {WHERE_TO_GET['ucf101']}"
        )
    video_dir = _first_dir(root, ("UCF-101", "videos")) or root
    class_ind = split_dir / "classInd.txt"
    classes = _ucf_classes(class_ind)
    index = {c: i for i, c in enumerate(classes)}
    lower = {c.lower(): i for i, c in enumerate(classes)}  # UCF101's own lists mix HandStand/Handstand
    records: list[Record] = []
    for split, stem in (("train", "trainlist"), ("test", "testlist")):
        list_file = split_dir / f"{stem}{split_id:02d}.txt"
        if not list_file.is_file():
            raise DataSourceError(
                f"{list_file}: split file not found (split {split_id}). {WHERE_TO_GET['ucf101']}"
            )
        for lineno, line in _read_lines(list_file):
            rel = line.split()[0].replace("\\", "/")
            class_name = rel.split("/")[0] if "/" in rel else ""
            where = f"listed in {list_file}:{lineno}"
            label = index.get(class_name, lower.get(class_name.lower(), -1))
            problem = None
            if label < 0:
                problem = f"class {class_name!r} is missing from {class_ind}"
            elif len(line.split()) > 1 and line.split()[1].isdigit() and int(line.split()[1]) != label + 1:
                problem = (
                    f"label {line.split()[1]} disagrees with {class_ind} ({classes[label]} = {label + 1})"
                )
            path = video_dir / rel
            problem = problem or _video_problem(path)
            vid = str(Path(rel).with_suffix(""))
            cname = classes[label] if label >= 0 else class_name
            records.append(_record(path, label, cname, split, vid, problem, where, skip_bad))
    return records, classes


# --------------------------------------------------------------------------------------------- HMDB51
_HMDB_SPLIT = re.compile(r"^(?P<cls>.+)_test_split(?P<n>\d)\.txt$")


def load_hmdb51(
    root: str | Path, split_id: int = 1, skip_bad: bool = False
) -> tuple[list[Record], list[str]]:
    root = _require_root(root, "hmdb51")
    pattern = f"*_test_split{split_id}.txt"
    split_dir = _first_dir(root, ("testTrainMulti_7030_splits", "splits", ""), pattern)
    if split_dir is None:
        raise DataSourceError(
            f"{root}: no {pattern} split files in testTrainMulti_7030_splits/, splits/ or the root. "
            f"{WHERE_TO_GET['hmdb51']}"
        )
    files = sorted(split_dir.glob(pattern))
    classes = sorted(_HMDB_SPLIT.match(f.name)["cls"] for f in files)
    video_dir = _first_dir(root, ("hmdb51_org", "videos", "")) or root
    records: list[Record] = []
    for label, cls in enumerate(classes):
        list_file = split_dir / f"{cls}_test_split{split_id}.txt"
        for lineno, line in _read_lines(list_file):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise DataSourceError(f"{list_file}:{lineno}: expected '<video> <0|1|2>', got {line!r}")
            if parts[1] == "0":
                continue
            split = "train" if parts[1] == "1" else "test"
            path = video_dir / cls / parts[0]
            vid = f"{cls}/{Path(parts[0]).stem}"
            where = f"listed in {list_file}:{lineno}"
            records.append(_record(path, label, cls, split, vid, _video_problem(path), where, skip_bad))
    return records, classes


# --------------------------------------------------------------------------------------------- folder
def load_folder(
    root: str | Path, split_id: int = 1, skip_bad: bool = False
) -> tuple[list[Record], list[str]]:
    root = _require_root(root, "folder")
    if not 1 <= split_id <= FOLDER_FOLDS:
        raise DataSourceError(f"folder source: --split must be 1..{FOLDER_FOLDS}, got {split_id}")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataSourceError(f"{root}: no class sub-folders. {WHERE_TO_GET['folder']}")
    records: list[Record] = []
    for label, cls in enumerate(classes):
        videos = sorted(
            p for p in (root / cls).rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file()
        )
        if not videos:
            raise DataSourceError(
                f"{root / cls}: class folder holds no video files ({', '.join(VIDEO_EXTENSIONS)})"
            )
        test = {i for i in range(len(videos)) if i % FOLDER_FOLDS == (split_id - 1)}
        if len(videos) >= 2 and not test:
            test = {len(videos) - 1}
        if len(test) == len(videos):  # a single video: keep it for training
            test = set()
        for i, p in enumerate(videos):
            vid = str(p.relative_to(root).with_suffix(""))
            split = "test" if i in test else "train"
            records.append(
                _record(p, label, cls, split, vid, _video_problem(p), f"in {root / cls}", skip_bad)
            )
    return records, classes


def load_any(root: str | Path, skip_bad: bool = False) -> list[Record]:
    """Every video file under ``root`` (any depth, sorted by path) as one unlabelled ``train`` split: what
    feature extraction reads (``python -m vicc_fast.extract --videos DIR``). Label 0 ("videos"); the video id
    is the path relative to root without extension."""
    root = _require_root(root, "folder")
    videos = sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
    if not videos:
        raise DataSourceError(f"{root}: holds no video files ({', '.join(VIDEO_EXTENSIONS)})")
    return [
        _record(p, 0, "videos", "train", str(p.relative_to(root).with_suffix("")), _video_problem(p),
                f"in {root}", skip_bad)
        for p in videos
    ]  # fmt: skip


# ------------------------------------------------------------------------------------------- Kinetics
KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end")
KINETICS_SPLITS = (("train", ("train",)), ("test", ("validate", "val")))
"""(our split, the CSV name stems that hold it): Kinetics' validate list is the test split of a build."""


def kinetics_name(youtube_id: str, time_start: int, time_end: int) -> str:
    """The file stem of a clip, as the official download scripts name it."""
    return f"{youtube_id}_{time_start:06d}_{time_end:06d}"


def _kinetics_csv(root: Path, stems: tuple[str, ...]) -> Path:
    """The annotation CSV of one split: ``<stem>.csv`` in annotations/ or the root, else the one ``*<stem>*.csv``."""
    folders = [d for d in (root / "annotations", root) if d.is_dir()]
    for d in folders:
        for stem in stems:
            if (d / f"{stem}.csv").is_file():
                return d / f"{stem}.csv"
    for d in folders:
        for stem in stems:
            found = sorted(p for p in d.glob(f"*{stem}*.csv") if p.is_file())
            if len(found) > 1:
                raise DataSourceError(
                    f"{d}: several {stem} annotation CSVs ({', '.join(p.name for p in found)}); keep one"
                )
            if found:
                return found[0]
    raise DataSourceError(
        f"{root}: no {' / '.join(f'{s}.csv' for s in stems)} in annotations/ or the root. {WHERE_TO_GET['kinetics']}"
    )


def _kinetics_rows(csv_path: Path) -> list[tuple[int, str, str, int, int]]:
    """(line, label, youtube_id, time_start, time_end) of every row; a malformed row is one error naming it."""
    import csv

    lines = _read_lines(csv_path)
    if not lines:
        raise DataSourceError(f"{csv_path}: empty annotation file")
    header = next(csv.reader([lines[0][1]]))
    missing = [c for c in KINETICS_COLUMNS if c not in header]
    if missing:
        raise DataSourceError(
            f"{csv_path}:{lines[0][0]}: header lacks {missing}; expected {','.join(KINETICS_COLUMNS)},split"
        )
    col = {c: header.index(c) for c in KINETICS_COLUMNS}
    rows = []
    for lineno, fields in zip(
        (n for n, _ in lines[1:]), csv.reader([ln for _, ln in lines[1:]]), strict=True
    ):
        try:
            label, yid = fields[col["label"]].strip(), fields[col["youtube_id"]].strip()
            start, end = int(float(fields[col["time_start"]])), int(float(fields[col["time_end"]]))
        except (IndexError, ValueError):
            raise DataSourceError(
                f"{csv_path}:{lineno}: expected {','.join(KINETICS_COLUMNS)},... got {','.join(fields)!r}"
            ) from None
        if not label or not yid:
            raise DataSourceError(f"{csv_path}:{lineno}: empty label or youtube_id")
        rows.append((lineno, label, yid, start, end))
    return rows


def _kinetics_index(root: Path) -> dict[str, list[Path]]:
    """Every video file under root by stem (one walk over the tree: K400 has 300k files)."""
    index: dict[str, list[Path]] = {}
    for p in sorted(root.rglob("*")):
        # hidden folders (a build's .work cache, a generator's scratch) hold no downloads
        if p.suffix.lower() in VIDEO_EXTENSIONS and not any(
            part.startswith(".") for part in p.relative_to(root).parts
        ):
            index.setdefault(p.stem, []).append(p)
    return index


def _kinetics_pick(paths: list[Path], root: Path, label: str, folders: tuple[str, ...]) -> Path:
    """Of the files with a clip's name, the one in its class folder / split folder, else the first."""

    def rank(p: Path) -> tuple[int, str]:
        parts = p.relative_to(root).parts[:-1]
        in_class = bool(parts) and parts[-1] in (label, label.replace(" ", "_"))
        in_split = any(f in parts for f in folders)
        return (-(2 * in_class + in_split), str(p))

    return min(paths, key=rank)


def load_kinetics(
    root: str | Path, split_id: int = 1, skip_bad: bool = True
) -> tuple[list[Record], list[str]]:
    """Kinetics records; missing / empty downloads always carry their problem (see the module docstring)."""
    root = _require_root(root, "kinetics")
    lists = {split: (_kinetics_csv(root, stems), stems) for split, stems in KINETICS_SPLITS}
    rows = {split: _kinetics_rows(path) for split, (path, _) in lists.items()}
    classes = sorted({label for _, label, *_ in rows["train"]})
    index_of = {c: i for i, c in enumerate(classes)}
    files = _kinetics_index(root)
    records: list[Record] = []
    for split, (csv_path, stems) in lists.items():
        seen: set[str] = set()
        for lineno, label, yid, start, end in rows[split]:
            stem = kinetics_name(yid, start, end)
            if stem in seen:
                raise DataSourceError(f"{csv_path}:{lineno}: clip {stem} is listed twice")
            seen.add(stem)
            label_id = index_of.get(label, -1)
            found = files.get(stem)
            path = _kinetics_pick(found, root, label, stems) if found else root / label / f"{stem}.mp4"
            if label_id < 0:
                problem = f"label {label!r} does not occur in the train list {lists['train'][0].name}"
            elif not found:
                problem = "file not found (not downloaded)"
            else:
                problem = _video_problem(path)
            records.append(Record(path, label_id, label, split, f"{split}/{stem}", problem))
    return records, classes


class RecordList(list):
    """A list of Records that also knows the data set's full class list (``classes``, label order), which
    records alone may not show when a class has no videos in a split."""

    def __init__(self, records, classes: list[str]) -> None:
        super().__init__(records)
        self.classes = list(classes)


_LOADERS = {
    Source.ucf101: load_ucf101,
    Source.hmdb51: load_hmdb51,
    Source.folder: load_folder,
    Source.kinetics: load_kinetics,
}


def load_records(
    source: str | Source, root: str | Path | None, split_id: int = 1, *, skip_bad: bool = False
) -> RecordList:
    """Records of one data set split, train then test, each in the data set's own list order.

    The result is a list of Record with a ``classes`` attribute (all class names in label order).
    """
    try:
        src = Source(source)
    except ValueError:
        raise DataSourceError(
            f"unknown source {source!r}; expected one of {[s.value for s in Source]}"
        ) from None
    if src in (Source.ucf101, Source.hmdb51) and split_id not in (1, 2, 3):
        raise DataSourceError(f"{src.value}: --split must be 1, 2 or 3, got {split_id}")
    records, classes = _LOADERS[src](root, split_id, skip_bad)
    if not records:
        raise DataSourceError(f"{root}: the {src.value} split {split_id} lists no videos")
    return RecordList(sorted(records, key=lambda r: r.split != "train"), classes)  # stable sort


def class_names(records: list[Record]) -> list[str]:
    """Class names in label order: the loader's full list when records come from load_records, else the
    names the records show (a label no record shows becomes ``class<i>``)."""
    if isinstance(getattr(records, "classes", None), list):
        return list(records.classes)
    names: dict[int, str] = {}
    for r in records:
        if r.label >= 0:
            names.setdefault(r.label, r.class_name)
    return [names.get(i, f"class{i}") for i in range(max(names, default=-1) + 1)]
