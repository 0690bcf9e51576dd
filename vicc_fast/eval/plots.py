"""Pictures of an evaluation: t-SNE of test features, a retrieval grid, training curves; PNG + TensorBoard.

Every function writes one PNG atomically and returns its path; :func:`log_png` copies a PNG into TensorBoard
as an image and :func:`log_embedding` puts features into TensorBoard's embedding projector.
"""

from __future__ import annotations

import inspect
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never a display
import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from vicc_fast import atomic  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _save(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    atomic.write_bytes(path, buf.getvalue())
    return Path(path)


def _colours(n: int) -> Any:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20" if n <= 20 else "gist_ncar")
    return [cmap(i / max(n - 1, 1)) if n > 20 else cmap(i) for i in range(n)]


def tsne_plot(
    feats: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    class_names: Sequence[str],
    path: str | Path,
    title: str = "",
    max_points: int = 2000,
    seed: int = 0,
    iterations: int = 1000,
) -> Path:
    """2-D t-SNE of ``feats [N, F]`` (a random subset of ``max_points``), one colour per class of ``labels [N]``.

    iterations: t-SNE optimisation steps (scikit-learn's ``max_iter``, at least 250)."""
    from sklearn.manifold import TSNE

    x = feats.detach().cpu().numpy() if isinstance(feats, torch.Tensor) else np.asarray(feats)
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if x.shape[0] != y.shape[0] or x.shape[0] < 3:
        raise ValueError(f"t-SNE needs >= 3 features with one label each, got {x.shape} and {y.shape}")
    rng = np.random.default_rng(seed)
    if x.shape[0] > max_points:
        keep = np.sort(rng.choice(x.shape[0], max_points, replace=False))
        x, y = x[keep], y[keep]
    if not np.isfinite(x).all():
        raise ValueError("t-SNE input holds NaN or inf features")
    spread = float(x.std(axis=0).max())
    note = ""
    if spread < 1e-6:
        # Every video has the same feature (a collapsed encoder): nothing to embed, and scikit-learn's
        # Barnes-Hut t-SNE crashes on zero-variance input. Draw them where they are: all at one point.
        emb = np.zeros((x.shape[0], 2))
        note = " (all features identical: collapsed)"
    else:
        perplexity = float(min(30.0, max(2.0, (x.shape[0] - 1) / 3)))
        # scikit-learn renamed n_iter to max_iter in 1.5; pyproject allows >= 1.4
        iters_key = "max_iter" if "max_iter" in inspect.signature(TSNE).parameters else "n_iter"
        tsne = TSNE(
            n_components=2,
            perplexity=perplexity,
            init="pca",
            random_state=seed,
            **{iters_key: max(iterations, 250)},
        )
        emb = tsne.fit_transform(x.astype(np.float32) / spread)
    classes = np.unique(y)
    cols = _colours(len(classes))
    fig, ax = plt.subplots(figsize=(7, 6))
    for c, col in zip(classes, cols):
        m = y == c
        name = class_names[c] if 0 <= c < len(class_names) else str(c)
        ax.scatter(emb[m, 0], emb[m, 1], s=10, color=col, label=name, alpha=0.8)
    if len(classes) <= 20:
        ax.legend(fontsize=7, markerscale=1.5, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title((title or f"t-SNE of {x.shape[0]} test videos") + note)
    return _save(fig, path)


def retrieval_grid(
    query_images: Sequence[np.ndarray],
    query_names: Sequence[str],
    neighbour_images: Sequence[Sequence[np.ndarray]],
    neighbour_names: Sequence[Sequence[str]],
    hits: Sequence[Sequence[bool]],
    path: str | Path,
    title: str = "",
) -> Path:
    """One row per query: its thumbnail, then its nearest train videos framed green (same class) or red.

    query_images: ``[H, W, 3]`` uint8 each; neighbour_images/names/hits: per query, best first.
    """
    rows = len(query_images)
    cols = 1 + max((len(n) for n in neighbour_images), default=0)
    if rows == 0:
        raise ValueError("retrieval grid needs at least one query")
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 1.7 * rows), squeeze=False)
    for r in range(rows):
        ax = axes[r][0]
        ax.imshow(query_images[r])
        ax.set_title(f"query: {query_names[r]}", fontsize=7)
        for sp in ax.spines.values():
            sp.set_edgecolor("blue")
            sp.set_linewidth(3)
        for c in range(1, cols):
            ax = axes[r][c]
            if c - 1 < len(neighbour_images[r]):
                ax.imshow(neighbour_images[r][c - 1])
                hit = bool(hits[r][c - 1])
                colour = "green" if hit else "red"
                ax.set_title(
                    f"{c}. {neighbour_names[r][c - 1]} {'✓' if hit else '✗'}", fontsize=7, color=colour
                )
                for sp in ax.spines.values():
                    sp.set_edgecolor(colour)
                    sp.set_linewidth(3)
            else:
                ax.axis("off")
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def read_scalars(
    tb_dir: str | Path, exclude: Sequence[str] = ("eval",)
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """All scalar series under a TensorBoard log folder (recursively): tag -> (steps, values).

    exclude: top-level sub-folders to skip (default: ``eval``, where evaluation writes, not training)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, tuple[list[int], list[float]]] = {}
    root = Path(tb_dir)
    for ev in sorted(root.rglob("events.out.tfevents.*")):
        if ev.relative_to(root).parts[0] in exclude:
            continue
        acc = EventAccumulator(str(ev), size_guidance={"scalars": 0})
        acc.Reload()
        prefix = str(ev.parent.relative_to(root))
        for tag in acc.Tags().get("scalars", []):
            name = tag if prefix in ("", ".") else f"{prefix}/{tag}"
            steps, vals = out.setdefault(name, ([], []))
            for e in acc.Scalars(tag):
                steps.append(e.step)
                vals.append(e.value)
    return {k: (np.asarray(s), np.asarray(v)) for k, (s, v) in out.items()}


def training_curves(
    tb_dir: str | Path, path: str | Path, max_panels: int = 12, title: str = ""
) -> Path | None:
    """One panel per metric of the run's TensorBoard logs, one line per phase (tags ``<phase>/<metric>`` share
    the run-wide step axis, so the phases follow each other left to right). Loss terms come first; metrics that
    never change (flags) are left out. None when the folder holds no scalars."""
    series = read_scalars(tb_dir)
    if not series:
        return None
    groups: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for tag, sv in series.items():
        prefix, _, metric = tag.rpartition("/")
        groups.setdefault(metric, {})[prefix or metric] = sv
    varying = {
        m: g
        for m, g in groups.items()
        if np.ptp(np.concatenate([v for _, v in g.values()])) > 0 or len(groups) == 1
    }
    metrics = sorted(varying, key=lambda m: (not m.startswith("loss"), m))[:max_panels] or sorted(groups)[:1]
    # one colour per phase across all panels, phases in the order they ran
    first: dict[str, float] = {}
    for tag, (st, _) in series.items():
        ph = tag.split("/")[0]
        first[ph] = min(first.get(ph, np.inf), float(st.min()) if st.size else np.inf)
    palette = _colours(len(first))
    colour = {ph: palette[i] for i, ph in enumerate(sorted(first, key=lambda p: (first[p], p)))}
    cols = min(3, len(metrics))
    rows = (len(metrics) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 2.9 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        g = groups[metric]
        for name in sorted(g, key=lambda n: float(g[n][0].min()) if g[n][0].size else 0.0):
            s, v = g[name]
            order = np.argsort(s, kind="stable")
            ax.plot(
                s[order], v[order], lw=1.2, marker="." if s.size < 30 else None, label=name,
                color=colour.get(name.split("/")[0]),
            )  # fmt: skip
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel("step", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if len(g) > 1:
            ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def check_png(path: str | Path) -> np.ndarray:
    """Read back a PNG (signature and decode); returns the image array. Raises ValueError if invalid."""
    data = Path(path).read_bytes()
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError(f"{path}: not a PNG")
    img = mpimg.imread(io.BytesIO(data), format="png")
    if img.ndim < 2 or img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"{path}: empty image")
    return img


def log_png(writer: Any, tag: str, path: str | Path, step: int = 0) -> None:
    """Add a written PNG to TensorBoard as an image (HWC)."""
    img = check_png(path)
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    writer.add_image(tag, img[..., :3], global_step=step, dataformats="HWC")


def log_embedding(
    writer: Any,
    tag: str,
    feats: torch.Tensor,
    labels: torch.Tensor,
    class_names: Sequence[str],
    step: int = 0,
) -> None:
    """Features ``[N, F]`` into TensorBoard's embedding projector, labelled by class name."""
    meta = [class_names[int(i)] if 0 <= int(i) < len(class_names) else str(int(i)) for i in labels]
    writer.add_embedding(feats.float().cpu(), metadata=meta, tag=tag, global_step=step)
