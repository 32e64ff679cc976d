"""Shared evaluation helpers: progress bar on stderr, verification metrics (ROC/DET, TAR@FAR, EER,
AUC, k-fold accuracy), a DET plot, and JSON output.

Conventions: `scores` are similarities (higher = more alike / more genuine), `labels` are 1 for a
genuine (same person / live) sample and 0 for an impostor (different person / attack). A sample is
accepted when score >= threshold. FAR = accepted impostors / impostors, TAR = accepted genuine /
genuine, FRR = 1 - TAR.
"""
from __future__ import annotations

import json
import math
import sys
import time
from statistics import NormalDist

import numpy as np


# ------------------------------------------------------------------ progress
class Progress:
    """`label [#####.....] n/total eta` on stderr. Redraws in place on a TTY, else every 10 %."""

    def __init__(self, total: int, label: str = "", stream=None, width: int = 30):
        self.total, self.label, self.width = max(int(total), 1), label, width
        self.stream = stream or sys.stderr
        self.n = 0
        self.t0 = time.monotonic()
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last_decile = -1

    def update(self, k: int = 1) -> None:
        self.n += k
        decile = int(10 * self.n / self.total)
        if self._tty or decile != self._last_decile or self.n >= self.total:
            self._last_decile = decile
            self._draw()

    def _draw(self) -> None:
        frac = min(self.n / self.total, 1.0)
        fill = int(self.width * frac)
        el = time.monotonic() - self.t0
        eta = el / frac - el if frac > 0 else 0.0
        line = f"{self.label} [{'#' * fill}{'.' * (self.width - fill)}] {self.n}/{self.total} eta {eta:4.0f}s"
        if self._tty:
            self.stream.write("\r" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ------------------------------------------------------------------ metrics
def _arrays(scores, labels):
    s = np.asarray(scores, np.float64).ravel()
    y = np.asarray(labels).astype(bool).ravel()
    if s.shape != y.shape:
        raise ValueError("scores and labels differ in length")
    if y.all() or (~y).all():
        raise ValueError("need both genuine (1) and impostor (0) samples")
    return s, y


def roc(scores, labels):
    """(far, tar, thresholds) at every distinct score, threshold descending, plus the (0,0) start."""
    s, y = _arrays(scores, labels)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]   # last index of each distinct score
    tp = np.cumsum(y)[last]
    fp = np.cumsum(~y)[last]
    tar = np.r_[0.0, tp / y.sum()]
    far = np.r_[0.0, fp / (~y).sum()]
    thr = np.r_[np.inf, s[last]]
    return far, tar, thr


def auc(scores, labels) -> float:
    far, tar, _ = roc(scores, labels)
    return float(np.trapezoid(tar, far))


def eer(scores, labels) -> tuple[float, float]:
    """(equal error rate, threshold there), interpolated between ROC points."""
    far, tar, thr = roc(scores, labels)
    frr = 1.0 - tar
    d = far - frr                       # rises from -1 to +1
    i = int(np.argmax(d >= 0))
    if i == 0:
        return float(far[0]), float(thr[1])
    d0, d1 = d[i - 1], d[i]
    w = 0.0 if d1 == d0 else -d0 / (d1 - d0)
    rate = far[i - 1] + w * (far[i] - far[i - 1])
    t = thr[i] if not np.isfinite(thr[i - 1]) else thr[i - 1] + w * (thr[i] - thr[i - 1])
    return float(rate), float(t)


def threshold_at_far(scores, labels, far: float) -> float:
    """Lowest threshold whose FAR on these impostors is <= far (accept: score >= threshold).

    With N impostors, floor(far * N) of them may score at or above it; the threshold sits just
    above the next impostor score.
    """
    s, y = _arrays(scores, labels)
    neg = np.sort(s[~y])[::-1]
    k = int(math.floor(far * len(neg) + 1e-9))
    if k >= len(neg):
        return float(neg[-1])
    return float(np.nextafter(neg[k], np.inf))


def tar_at_far(scores, labels, far: float) -> tuple[float, float]:
    """(TAR, threshold) at the threshold_at_far."""
    s, y = _arrays(scores, labels)
    t = threshold_at_far(s, y, far)
    return float((s[y] >= t).mean()), t


def best_accuracy_threshold(scores, labels) -> float:
    """Threshold maximising accuracy (midpoint between neighbouring scores)."""
    s, y = _arrays(scores, labels)
    order = np.argsort(s, kind="mergesort")
    ys, ss = y[order], s[order]
    # a threshold between ss[i-1] and ss[i] rejects the first i; only cut between distinct scores
    neg_below = np.r_[0, np.cumsum(~ys)]
    pos_above = ys.sum() - np.r_[0, np.cumsum(ys)]
    accs = (neg_below + pos_above) / len(s)
    valid = np.r_[True, ss[1:] > ss[:-1], True]
    accs = np.where(valid, accs, -1)
    i = int(np.argmax(accs))
    if i == 0:
        return float(ss[0] - 1e-6)
    if i == len(ss):
        return float(ss[-1] + 1e-6)
    return float((ss[i - 1] + ss[i]) / 2)


def kfold_accuracy(scores, labels, folds) -> dict:
    """LFW protocol: for each fold, the accuracy-maximising threshold on the other folds is applied to it."""
    s, y = _arrays(scores, labels)
    f = np.asarray(folds).ravel()
    accs, thrs = [], []
    uniq = sorted(set(f.tolist()))
    for k in uniq:
        test = f == k
        if len(uniq) == 1:
            train = test
        else:
            train = ~test
        t = best_accuracy_threshold(s[train], y[train])
        accs.append(float(((s[test] >= t) == y[test]).mean()))
        thrs.append(t)
    return {"accuracy": float(np.mean(accs)), "accuracy_std": float(np.std(accs)),
            "fold_accuracy": accs, "fold_thresholds": thrs}


def summary(scores, labels, folds=None, fars=(1e-2, 1e-3)) -> dict:
    """The usual verification figures in one dict."""
    s, y = _arrays(scores, labels)
    out = {"genuine": int(y.sum()), "impostor": int((~y).sum())}
    if folds is not None:
        kf = kfold_accuracy(s, y, folds)
        out["accuracy"] = kf["accuracy"]
        out["accuracy_std"] = kf["accuracy_std"]
    for far in fars:
        tar, t = tar_at_far(s, y, far)
        tag = f"{far:.0e}".replace("e-0", "e-")
        out[f"tar_at_far_{tag}"] = tar
        out[f"threshold_at_far_{tag}"] = t
    out["eer"], out["threshold_at_eer"] = eer(s, y)
    out["auc"] = auc(s, y)
    return out


# ------------------------------------------------------------------ DET plot
_ND = NormalDist()


def _probit(p):
    p = np.clip(np.asarray(p, np.float64), 1e-5, 1 - 1e-5)
    return np.array([_ND.inv_cdf(v) for v in p.ravel()]).reshape(p.shape)


def plot_det(path, curves, points=(), title: str = "DET") -> None:
    """DET curve(s) on normal-deviate axes. curves: [(label, scores, labels)];
    points: [(label, far, frr)] operating points to mark."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 6))
    lo = 0.5
    for label, s, y in curves:
        far, tar, _ = roc(s, y)
        frr = 1 - tar
        n_imp = int((np.asarray(y) == 0).sum())
        lo = min(lo, 0.5 / max(n_imp, 1))
        keep = (far > 0) & (frr > 0)          # 0 has no place on normal-deviate axes
        ax.plot(_probit(far[keep]), _probit(frr[keep]), label=label, lw=1.5, drawstyle="steps-post")
    for label, far, frr in points:
        ax.plot(_probit(far), _probit(frr), "o", ms=8, label=f"{label} (FAR {far:.1e}, FRR {frr:.3f})")
    ticks = [1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5]
    names = ["0.01%", "0.1%", "1%", "5%", "20%", "50%"]
    ax.set_xticks(_probit(ticks), names)
    ax.set_yticks(_probit(ticks), names)
    lim = _probit([max(lo, 5e-5), 0.6])
    ax.set_xlim(*lim)
    ax.set_ylim(*lim)
    ax.set_xlabel("false accept rate (FAR)")
    ax.set_ylabel("false reject rate (FRR)")
    ax.grid(True, alpha=0.3)
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------ output
def _clean(o, digits: int):
    if isinstance(o, float):
        return None if not math.isfinite(o) else round(o, digits)
    if isinstance(o, (np.floating,)):
        return _clean(float(o), digits)
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, dict):
        return {k: _clean(v, digits) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v, digits) for v in o]
    return o


def emit_json(obj: dict, stream=None, digits: int = 5) -> None:
    """One JSON object on one line to stdout (floats rounded, NaN/inf as null)."""
    stream = stream or sys.stdout
    stream.write(json.dumps(_clean(obj, digits), sort_keys=False) + "\n")
    stream.flush()


def parse_folds(spec: str) -> list[int]:
    """'1-5' -> [1..5]; '1,3' -> [1,3]; '2' -> [2]."""
    out: list[int] = []
    for part in str(spec).split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            a, b = part.split("-", 1)
            out += list(range(int(a), int(b) + 1))
        else:
            out.append(int(part))
    if not out:
        raise ValueError(f"no folds in {spec!r}")
    return sorted(set(out))
