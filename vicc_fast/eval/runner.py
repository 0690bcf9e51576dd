"""One evaluation of one checkpoint: the protocols of the CLI, sharing cached features, writing results.

Every input check (checkpoint, overrides, shard set, classes) runs in the constructor, before any compute. The
results of each protocol are merged into ``<run>/eval/results.json`` (keyed by checkpoint file stem) and the
run's markdown table ``<run>/eval/results.md`` is rewritten; pictures go to ``<run>/eval/<ckpt>/`` and to
TensorBoard under ``<run>/tb/eval``.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vicc_fast import config as C
from vicc_fast.config import Stream
from vicc_fast.eval import cluster as CL
from vicc_fast.eval import plots, report
from vicc_fast.eval.cache import FeatureCache, cache_key, feature_settings
from vicc_fast.eval.features import centre_normalise, common_rows, extract, with_eval_precision
from vicc_fast.eval.inputs import EvalInputError, check_dataset, encoder_sha256, load_checkpoint, thumbnail
from vicc_fast.eval.retrieval import fused_recall, nearest_neighbours, retrieval_cfg


def run_dir_of(ckpt: Path) -> Path:
    """The run folder of a checkpoint: ``<run>/checkpoints/x.pt`` -> ``<run>``; otherwise the file's folder."""
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


METHOD_LABELS = {"vicc": "ViCC", "coclr": "CoCLR", "goca": "GOCA"}
BACKBONE_LABELS = {"s3d": "S3D", "r21d": "R(2+1)D", "r3d": "R3D", "tiny": "tiny 3D CNN"}


def run_title(cfg: C.Config, data_name: str) -> str:
    """What a run is, for picture titles: method, backbone, data set and seed, read from its config and its
    data set's manifest (never from a folder name: runs are often drawn from a temporary copy)."""
    method = METHOD_LABELS.get(cfg.method.name.value, cfg.method.name.value)
    if cfg.method.name is C.MethodName.goca and cfg.method.goca.variant is not C.GocaVariant.goca:
        method = (
            "SView"
            if cfg.method.goca.variant is C.GocaVariant.sview
            else f"GOCA-{cfg.method.goca.variant.value}"
        )
    backbone = BACKBONE_LABELS.get(cfg.model.backbone.value, cfg.model.backbone.value)
    return f"{method}, {backbone}, {data_name}, seed {cfg.train.seed}"


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise EvalInputError("--device cuda: no CUDA device is visible")
        return torch.device("cuda")
    return torch.device("cpu")


def _with_augment(cfg: C.Config, **augment: Any) -> C.Config:
    data = dataclasses.replace(cfg.data, augment=dataclasses.replace(cfg.data.augment, **augment))
    return dataclasses.replace(cfg, data=data)


def _with_data_eval(cfg: C.Config, **data_eval: Any) -> C.Config:
    data = dataclasses.replace(cfg.data, eval=dataclasses.replace(cfg.data.eval, **data_eval))
    return dataclasses.replace(cfg, data=data)


def supervised_cfg(cfg: C.Config) -> C.Config:
    """The train-mode pipeline of the linear probe and finetuning, ``eval.train_batch_size`` clips per step
    (released: 32 per GPU x 4 GPUs, ``main_classifier.py`` l. 98-101): the released classifier's clips
    (``eval.released_train_augment``: crop + jitter p=0.3, no per-clip flip / grayscale / blur; its flip is the
    batch's, ``eval.train_batch_flip``), or the self-supervised augmentation without Gaussian blur; never the
    two-view controller (one view here)."""
    cfg = _with_augment(cfg, blur_prob=0.0, aug_controller=False)
    if cfg.eval.released_train_augment and cfg.data.augment.crop is C.CropMode.released:
        cfg = _with_augment(
            cfg, crop=C.CropMode.classifier
        )  # main_classifier.py: RandomSizedCrop consistent=True
    if cfg.eval.released_train_augment:
        cfg = _with_augment(
            cfg, hflip=False, grayscale_prob=0.0, color_jitter_prob=0.3,
            brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1,
        )  # fmt: skip
    return dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, batch_size=cfg.eval.train_batch_size)
    )


class Evaluation:
    """Evaluate checkpoint ``ckpt`` (``key=value`` overrides on top of its training config) on ``device``."""

    def __init__(
        self,
        ckpt: str | Path,
        overrides: list[str] | tuple[str, ...] = (),
        device: torch.device | None = None,
        progress: bool = True,
        tensorboard: bool = True,
        released_stream: str | None = None,
    ) -> None:
        self.ck = load_checkpoint(ckpt, overrides, released_stream)
        self.cfg = with_eval_precision(self.ck.cfg)  # train.amp := eval.amp for every forward here
        self.data = check_dataset(self.cfg.data.root, self.cfg.data.require_recipe.value)
        self.device = device or torch.device("cpu")
        self.progress = progress
        self.run_dir = run_dir_of(self.ck.path)
        self.name = self.ck.path.stem
        self.title = run_title(self.cfg, self.data.name)
        self.out = self.run_dir / "eval" / self.name
        self.cache = FeatureCache(self.cfg.eval.cache_dir or self.run_dir / "eval" / "cache")
        self.streams = self.ck.trained_streams
        if not self.streams:
            raise EvalInputError(f"checkpoint {self.ck.path}: no phase has trained any stream yet")
        self.num_classes = len(self.data.classes)
        self.weights_sha = {s: encoder_sha256(self.ck.encoders[s]) for s in self.streams}
        self.entry: dict[str, Any] = {
            "checkpoint": str(self.ck.path),
            "sha256": self.ck.sha256,
            "phase": self.ck.phase,
            "trained_phases": self.ck.trained_phases,
            "labels": self.ck.labels,
            "data_root": str(self.data.root),
            "settings": feature_settings(self.cfg),  # what the feature-based numbers were computed with
        }
        self._tb: Any = None
        self._tensorboard = tensorboard
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------------------------------ features
    def loader(self, split: str, mode: str, stream: Stream, cfg: C.Config | None = None) -> Any:
        from vicc_fast.data.loader import build_loader

        return build_loader(cfg or self.cfg, split, mode, (stream,), 1, 0, 1, self.device)

    def features(
        self, stream: Stream, split: str, retrieval: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw clip-averaged features ``[N, F]``, labels ``[N]`` and split indices ``[N]`` of the videos of a split
        the loader kept (all but recorded rejections), from the cache when present.

        ``retrieval``: read as the retrieval protocol reads them (:func:`retrieval_cfg`: its crop and train
        clips; clip features L2-normalised before the average with ``eval.retrieval.clip_l2norm``)."""
        cfg = retrieval_cfg(self.cfg, split) if retrieval else self.cfg
        clip_l2norm = retrieval and self.cfg.eval.retrieval.clip_l2norm
        key = cache_key(
            self.weights_sha[stream], stream, split, cfg, self.data.manifest_sha256, clip_l2norm=clip_l2norm
        )

        def compute() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            t0 = time.perf_counter()
            try:
                return encode()
            finally:
                self.timings[f"extract/{split}/{stream.value}"] = time.perf_counter() - t0

        def encode() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            enc = self.ck.encoders[stream].to(self.device)
            if self.cfg.train.channels_last and self.device.type == "cuda":
                enc = enc.to(memory_format=torch.channels_last_3d)
            return extract(
                enc,
                self.loader(split, "eval", stream, cfg),
                self.device,
                stream=stream,
                amp=self.cfg.train.amp,
                progress=self.progress,
                desc=f"{split} {stream.value} features",
                clip_l2norm=clip_l2norm,
            )

        feats, labels, index = self.cache.get(key, compute, name=f"{split}_{stream.value}")
        # rows of the videos the loader kept (index: their split indices; data.short_videos drops some)
        expected = torch.from_numpy(self.data.labels[split])[index.long()]
        if not torch.equal(labels.long(), expected):
            raise RuntimeError(
                f"{self.data.root}: {split} labels from the loader disagree with the shards' .lbl members"
            )
        return feats, labels, index.long()

    def rows(
        self, split: str, retrieval: bool = False
    ) -> tuple[dict[Stream, torch.Tensor], torch.Tensor, torch.Tensor]:
        """:meth:`features` of every stream over the videos all streams kept (:func:`common_rows`): (stream ->
        ``[M, F]``, labels ``[M]``, split indices ``[M]``); how many videos of the split that leaves out goes
        into the results (``videos``)."""
        return self._common({s: self.features(s, split, retrieval) for s in self.streams}, split)

    def _common(
        self, per_stream: dict[Stream, tuple[torch.Tensor, torch.Tensor, torch.Tensor]], split: str
    ) -> tuple[dict[Stream, torch.Tensor], torch.Tensor, torch.Tensor]:
        values, labels, index = common_rows(per_stream)
        total = int(self.data.num_samples[split])
        self.entry.setdefault("videos", {})[split] = {"evaluated": len(index), "left_out": total - len(index)}
        return values, labels, index

    def _accuracies(
        self, tested: dict[Stream, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    ) -> dict[str, float]:
        """Top-k accuracy per stream and, with two streams, of R+F (mean probabilities), all over the test
        videos every stream kept. tested: stream -> (probabilities [N_s, C], labels, split indices)."""
        from vicc_fast.eval.finetune import fuse_probabilities
        from vicc_fast.eval.linear import topk_accuracy

        probs, labels, _ = self._common(tested, "test")
        res = {f"{s.value}/{k}": v for s in probs for k, v in topk_accuracy(probs[s], labels).items()}
        if len(probs) == 2:
            res.update(
                {f"rf/{k}": v for k, v in topk_accuracy(fuse_probabilities(*probs.values()), labels).items()}
            )
        return res

    # ------------------------------------------------------------------------------------------ protocols
    def retrieval(self) -> dict[str, float]:
        q, ql, _ = self.rows("test", retrieval=True)
        g, gl, _ = self.rows("train", retrieval=True)
        ret = self.cfg.eval.retrieval
        res = fused_recall(
            q, ql, g, gl, list(ret.recall_ks), chunk=ret.knn_chunk, centre_each=ret.centre_each
        )
        self._record("retrieval", res)
        return res

    def linear(self) -> dict[str, float]:
        from vicc_fast.eval.finetune import predict_videos
        from vicc_fast.eval.linear import (
            ProbeOnEncoder,
            fit_linear_augmented,
            fit_linear_on_features,
            predict,
        )

        e, lin = self.cfg.eval, self.cfg.eval.linear
        recipe = {"optim": lin.optim.value, "milestones": list(lin.milestones), "l2norm": lin.l2norm}
        step_recipe = {"forward_batch": e.train_forward_batch, "batch_flip": e.train_batch_flip}
        res: dict[str, float] = {}
        train, trl, _ = self.rows("train")
        tested = {}  # stream -> (probabilities, labels, split indices) of the test videos it kept
        for s in self.streams:
            tr = train[s]
            if lin.augment:
                cfg = supervised_cfg(self.cfg)
                enc = self.ck.encoders[s].to(self.device)
                probe = fit_linear_augmented(
                    enc, self.loader("train", "train", s, cfg), s, tr.shape[1], self.num_classes, self.device,
                    epochs=lin.epochs, lr=lin.lr, weight_decay=lin.weight_decay,
                    amp=self.cfg.train.amp.value, seed=self.cfg.train.seed, progress=self.progress, **recipe,
                    **step_recipe,
                )  # fmt: skip
            else:
                probe = fit_linear_on_features(
                    tr.to(self.device), trl.to(self.device), self.num_classes, epochs=lin.epochs,
                    lr=lin.lr, weight_decay=lin.weight_decay, batch_size=lin.batch_size,
                    seed=self.cfg.train.seed, progress=self.progress, **recipe,
                )  # fmt: skip
            if lin.test_clips:
                model = ProbeOnEncoder(self.ck.encoders[s].to(self.device), probe).eval()
                test = self.loader("test", "eval", s, self.cfg)
                tested[s] = predict_videos(
                    model, test, s, self.device, self.data.num_samples["test"], self.cfg.train.amp, self.progress
                )  # fmt: skip
            else:
                te, tel, index = self.features(s, "test")
                tested[s] = (predict(probe, te), tel, index)
        res.update(self._accuracies(tested))
        res["augmented"] = float(lin.augment)
        self._record("linear", res)
        return res

    def finetune(self) -> dict[str, float]:
        from vicc_fast.eval.finetune import (
            FinetuneModel,
            clone_encoder,
            finetune,
            predict_videos,
        )

        e, ft = self.cfg.eval, self.cfg.eval.finetune
        train_cfg = supervised_cfg(self.cfg)
        test_cfg = _with_data_eval(self.cfg, crop=C.EvalCrop.tencrop)
        tested = {}  # stream -> (probabilities, labels, split indices) of the test videos it kept
        for s in self.streams:
            model = FinetuneModel(
                clone_encoder(self.ck.encoders[s]),
                self.num_classes,
                ft.dropout,
                released_init=ft.released_init,
            )
            if self.cfg.train.channels_last and self.device.type == "cuda":
                model = model.to(self.device, memory_format=torch.channels_last_3d)  # the loader's layout
            model = finetune(
                model, self.loader("train", "train", s, train_cfg), s, self.device, ft.epochs,
                lr=ft.lr, weight_decay=ft.weight_decay, amp=self.cfg.train.amp,
                seed=self.cfg.train.seed, progress=self.progress, optim=ft.optim.value,
                milestones=list(ft.milestones), encoder_lr_scale=ft.encoder_lr_scale,
                forward_batch=e.train_forward_batch, batch_flip=e.train_batch_flip,
            )  # fmt: skip
            test = self.loader("test", "eval", s, test_cfg)
            tested[s] = predict_videos(
                model, test, s, self.device, self.data.num_samples["test"], self.cfg.train.amp, self.progress
            )
        res = self._accuracies(tested)
        self._record("finetune", res)
        return res

    def prototype_scores(
        self, stream: Stream, raw: torch.Tensor, train_raw: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """Scores ``[N, K]`` of videos against the stream's prototypes (head applied to the clip-averaged
        backbone feature ``raw: [N, F]``), or None for a method without prototypes.

        With ``eval.cluster.prototypes=refit`` and ``train_raw`` (the train videos' features) the prototypes
        are K = number of classes ones refitted on the train videos' embeddings (:func:`CL.refit_prototypes`),
        else the model's own training prototypes."""
        scorer = self.ck.method.prototype_scorer(stream)
        if scorer is None:
            return None
        scorer = copy.deepcopy(scorer).float().cpu()
        cl = self.cfg.eval.cluster
        refit = C.ClusterPrototypes(cl.prototypes) is C.ClusterPrototypes.refit
        if not refit or train_raw is None:
            with torch.no_grad():
                return scorer(raw.float())
        if not (isinstance(scorer, torch.nn.Sequential) and len(scorer) == 2):
            raise EvalInputError(
                f"{type(self.ck.method).__name__}: prototype_scorer is not (head, prototypes)"
            )
        head = scorer[0]
        m = self.cfg.method.swav
        with torch.no_grad():
            z_train, z = head(train_raw.float()), head(raw.float())
        c = CL.refit_prototypes(
            z_train,
            self.num_classes,
            epsilon=m.epsilon,
            temperature=m.temperature,
            sinkhorn_iters=m.sinkhorn_iters,
            epochs=cl.refit_epochs,
            lr=cl.refit_lr,
            batch_size=cl.refit_batch_size,
            seed=self.cfg.train.seed,
        )
        return z @ c.t()

    def cluster_protocol(self) -> C.ClusterProtocol:
        """``eval.cluster.protocol`` with ``auto`` resolved: GOCA's (majority) for method goca, else ViCC's."""
        p = C.ClusterProtocol(self.cfg.eval.cluster.protocol)
        if p is C.ClusterProtocol.auto:
            goca = C.MethodName(self.cfg.method.name) is C.MethodName.goca
            return C.ClusterProtocol.majority if goca else C.ClusterProtocol.hungarian
        return p

    def cluster(self) -> dict[str, float]:
        """Test-set clusters per stream under :meth:`cluster_protocol`: ``majority`` (GOCA 4.3) K-means only,
        ``{s}/majority/{acc,nmi,f1}`` means of ``eval.cluster.runs`` runs; ``hungarian`` (ViCC supp. 3.1.2)
        ``{s}/kmeans/...`` and, for a method with prototypes, ``{s}/proto/...`` of the refitted K = classes
        prototypes (``eval.cluster.prototypes=refit``) or of the training ones (``trained``)."""
        cl = self.cfg.eval.cluster
        protocol = self.cluster_protocol()
        res: dict[str, float] = {}
        train = self.rows("train")[0]
        test, tel, _ = self.rows("test")
        for s in self.streams:
            te = test[s]
            _, te_n = centre_normalise(train[s], te)
            if protocol is C.ClusterProtocol.majority:
                got = CL.majority_protocol(te_n, tel, self.num_classes, cl.runs, self.cfg.train.seed)
                res.update({f"{s.value}/majority/{k}": v for k, v in got.items()})
                continue
            pred = CL.kmeans_assign(te_n, self.num_classes, cl.restarts, self.cfg.train.seed)
            res.update({f"{s.value}/kmeans/{k}": v for k, v in CL.cluster_metrics(pred, tel).items()})
            scores = self.prototype_scores(s, te, train[s])
            if scores is not None:
                res.update(
                    {f"{s.value}/proto/{k}": v for k, v in CL.cluster_metrics(scores.argmax(1), tel).items()}
                )
        self.entry["cluster_settings"] = {
            "protocol": protocol.value,
            "prototypes": C.ClusterPrototypes(cl.prototypes).value,
            "kmeans_restarts": cl.restarts,
            "runs": cl.runs,
            "refit_epochs": cl.refit_epochs,
            "refit_lr": cl.refit_lr,
            "refit_batch_size": cl.refit_batch_size,
        }
        self._record("cluster", res)
        return res

    # ------------------------------------------------------------------------------------------ pictures
    def tsne(self) -> list[Path]:
        paths = []
        train = self.rows("train")[0]
        test, tel, _ = self.rows("test")
        for s in self.streams:
            _, te_n = centre_normalise(train[s], test[s])
            label = self.ck.labels[s.value]
            p = plots.tsne_plot(
                te_n, tel, self.data.classes, self.out / f"tsne_{s.value}.png",
                title=f"t-SNE of test features, {label} ({self.name})\n{self.title}",
                max_points=self.cfg.eval.plots.tsne_max_points, seed=self.cfg.train.seed,
            )  # fmt: skip
            paths.append(p)
            self._tb_png(f"eval/{self.name}/tsne_{s.value}", p)
            if self.writer is not None:
                plots.log_embedding(
                    self.writer, f"{self.name}_{s.value}_test", te_n, tel, self.data.classes,
                    step=len(self.ck.trained_phases),  # a distinct projector folder per stage
                )  # fmt: skip
        return paths

    def grid(self) -> list[Path]:
        """Retrieval grid per stream: ``eval.plots.grid_queries`` test queries of different classes and their top 5."""
        paths = []
        # rows of the videos the loaders kept; thumbnails are read by split index (te_index / tr_index)
        train, gl, tr_index = self.rows("train")
        test, tel, te_index = self.rows("test")
        first_of_class = [int(torch.nonzero(tel == c)[0]) for c in torch.unique(tel).tolist()]
        queries = first_of_class[: self.cfg.eval.plots.grid_queries]
        thumbs: dict[tuple[str, int], np.ndarray] = {}

        def thumb(split: str, i: int) -> np.ndarray:
            if (split, i) not in thumbs:
                thumbs[(split, i)] = thumbnail(self.data, split, i)
            return thumbs[(split, i)]

        cls = self.data.classes
        for s in self.streams:
            tr_n, te_n = centre_normalise(train[s], test[s])
            _, idx = nearest_neighbours(te_n[queries], tr_n, 5, chunk=self.cfg.eval.retrieval.knn_chunk)
            p = plots.retrieval_grid(
                [thumb("test", int(te_index[q])) for q in queries],
                [cls[int(tel[q])] for q in queries],
                [[thumb("train", int(tr_index[j])) for j in row] for row in idx],
                [[cls[int(gl[j])] for j in row] for row in idx],
                [[bool(gl[j] == tel[q]) for j in row] for q, row in zip(queries, idx)],
                self.out / f"retrieval_{s.value}.png",
                title=f"{self.ck.labels[s.value]}: test query (blue) and its 5 nearest train videos\n{self.title}",
            )
            paths.append(p)
            self._tb_png(f"eval/{self.name}/retrieval_{s.value}", p)
        return paths

    def curves(self) -> list[Path]:
        p = plots.training_curves(
            self.run_dir / "tb", self.out / "training_curves.png", title=f"training curves: {self.title}"
        )
        if p is None:
            return []
        self._tb_png(f"eval/{self.name}/training_curves", p)
        return [p]

    # ------------------------------------------------------------------------------------------ output
    @property
    def writer(self) -> Any:
        if self._tb is None and self._tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tb" / "eval"))
        return self._tb

    def _tb_png(self, tag: str, path: Path) -> None:
        if self.writer is not None:
            plots.log_png(self.writer, tag, path)

    def _record(self, protocol: str, res: dict[str, float]) -> None:
        self.entry[protocol] = res
        if self.writer is not None:
            for k, v in res.items():
                self.writer.add_scalar(f"eval/{self.name}/{protocol}/{k}", v, 0)
        self.save()  # a later protocol's failure never loses this one's numbers

    def save(self, pictures: list[Path] | None = None) -> Path:
        """Merge this checkpoint's results into ``<run>/eval/results.json`` and rewrite ``results.md``."""
        if pictures:
            self.entry["pictures"] = sorted({*self.entry.get("pictures", []), *(str(p) for p in pictures)})
        self.entry["cache"] = {"hits": self.cache.hits, "misses": self.cache.misses}
        self.entry["seconds"] = {k: round(v, 3) for k, v in self.timings.items()}
        report.update_eval_results(self.run_dir, self.name, self.entry)
        md = report.write_run_report(self.run_dir)
        if self._tb is not None:
            self._tb.flush()
        return md

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
