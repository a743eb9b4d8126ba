"""MFIBA: multiscale feature importance-based bit allocation, and rate control to a
target rate, for a codec that codes every scale i at its own quality index phi_i: the
learned per-scale codec (learned_ps, codec/models/fenet_ps.py; phi is its gain-unit row)
or VVC with one QP per scale (mpeg_anchor_ps; its quality index is QP_MAX - QP, so that a
higher index spends more bits there too). The allocator sees a codec only through a
`ScaleCoder` (bits and the decoder's reconstruction of scale i at index q).

Notation (scale 0 the finest; A_i = H_i x W_i positions of scale i, k_i = A_0 / A_i its
area ratio, k^i for strides two apart):

* R_i: bits of scale i per position of scale i; the latent bits of an image are
  sum_i R_i A_i = A_0 sum_i R_i / k_i.
* MFIP (importance prediction): scale i is precoded at the levels phi in `levels`, put
  in place of the uncompressed scale alone, and NN part 2's task loss against its output
  on the uncompressed features is measured (label-free: the distillation loss of
  codec/training/task.py through the task heads): d_ij. Each level's vector (d_1j..d_kj) is
  normalised to sum 1 and the vectors are averaged over the levels: the weights w_i
  (sum 1).
* The task loss-rate model: d_i = w_i alpha R_i^(-beta) (alpha, beta fitted offline on
  training images, tools/fit_mfiba.py).
* The allocation minimises sum_i w_i d_i + lambda' sum_i R_i / k_i: the closed form
  R~_i = (w_i alpha beta k_i / lambda')^(1 / (beta + 1)).
* The rate-phi model per scale: R_i(phi) = a_i phi + b_i (fitted offline, and refitted
  on the image through the rates MFIP's precoding measured); phi_i = (R~_i - b_i) / a_i
  rounded to the model's grid. For VVC the rate-QP model is log-linear (`rate_model`
  "log_linear": ln R_i = a_i q + b_i, q = QP_MAX - QP, what a hybrid codec's rate does
  over QP), q_i = (ln R~_i - b_i) / a_i, and the measured rates are interpolated
  geometrically.
* A target rate: lambda' by bisection (the allocation is monotone in lambda'), the
  allocation's bits predicted from the rates measured so far (interpolated between
  measured levels, along the image's line outside them); the allocation chosen is then
  refined among its neighbours (every phi_i +-1) to the lowest model distortion within
  `RATE_TOLERANCE` of the target (the closest to it if none is), its rates measured, and
  the search repeated until the chosen allocation's rates are all measured, so the
  latents' size is known exactly, not predicted. A target below the lowest allocation's
  rate (the header alone, even) gives the closest reachable one: every scale at phi 0.
* The fine-tuned variant (mfiba_ft) calibrates each w_i by a line search in steps of
  0.01 (coordinate after coordinate, +-`FT_SPAN`): the weights whose allocation gives the
  lowest measured task loss (at the target: without spending more bits; with lambda':
  task loss + lambda' sum_i R_i / k_i).

* The exhaustive variant (exhaustive) measures instead of modelling: every scale precoded
  at every quality index (Q x scales codings, for codecs of at most `EXHAUSTIVE_MAX_Q`
  indices), d_i(phi) measured at each, and the combination minimising sum_i d_i(phi_i)
  chosen outright among all Q^scales (at a target: within the target's bits, exact sizes;
  none fits: the smallest; with lambda': + lambda' sum_i R_i / k_i). The sum is MFIP's own
  separable model with measured terms; it is the exact task loss of the combination when
  each task head sees one scale (NanoDet's heads; tools/bench_mfiba_oracle.py checks it).

The fitted models of a codec model live beside its weights (NAME.mfiba.json, with the
sha256 of the weights they were fitted for).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from codec.errors import EncodeError

if TYPE_CHECKING:
    import torch

    from codec.models.fenet_ps import PerScaleCodec
    from codec.modes.base import EncodeContext

RATE_TOLERANCE = 0.03  # the refinement's window around a target (fraction of the target bits)
MAX_PASSES = 6  # measurement rounds of a target search
FT_STEP = 0.01  # the fine-tuned variant's line-search step on w_i
FT_SPAN = 0.1  # ... and how far it searches on either side
LAMBDA_RANGE = (1e-9, 1e9)
EXHAUSTIVE_MAX_Q = 16  # the exhaustive variant codes every scale at every index: a small grid only


RATE_MODELS = ("linear", "log_linear")


@dataclass(frozen=True)
class RatePhiLine:
    """R(phi) = a phi + b, bits per position of the scale; with `log`: ln R(phi) = a phi + b
    (the rate-QP model of VVC, phi = QP_MAX - QP)."""

    a: float
    b: float
    log: bool = False

    def rate(self, phi: float) -> float:
        if self.log:
            return math.exp(min(self.a * phi + self.b, 700.0))
        return self.a * phi + self.b

    def phi(self, rate: float) -> float:
        if self.a <= 0:
            return 0.0
        if self.log:
            return (math.log(rate) - self.b) / self.a if rate > 0 else -math.inf
        return (rate - self.b) / self.a

    def step(self, bits: float, dphi: float) -> float:
        """Bits `dphi` indices away from a measured point of `bits` along a log line's slope."""
        return bits * math.exp(min(self.a * dphi, 700.0))


@dataclass(frozen=True)
class FittedModels:
    """The offline-fitted models of one codec model's weights."""

    alpha: float
    beta: float
    rate_phi: tuple[RatePhiLine, ...]
    scales: tuple[str, ...]
    num_qualities: int
    codec_weights_sha256: str  # the weights the fit holds for (learned_ps: the codec's; VVC: the network's)
    record: dict = field(default_factory=dict, compare=False)  # how they were fitted, their fit
    rate_model: str = "linear"  # "linear" (R = a phi + b) or "log_linear" (ln R = a phi + b)

    def to_json(self) -> dict:
        return {
            "codec_weights_sha256": self.codec_weights_sha256,
            "scales": list(self.scales),
            "num_qualities": self.num_qualities,
            **({"rate_model": self.rate_model} if self.rate_model != "linear" else {}),
            "task_rate": {"alpha": self.alpha, "beta": self.beta},
            "rate_phi": [{"scale": s, "a": ln.a, "b": ln.b} for s, ln in zip(self.scales, self.rate_phi)],
            **self.record,
        }

    @classmethod
    def from_json(cls, d: dict) -> FittedModels:
        try:
            rate_model = str(d.get("rate_model", "linear"))
            if rate_model not in RATE_MODELS:
                raise ValueError(f"rate_model {rate_model!r} is not one of {', '.join(RATE_MODELS)}")
            log = rate_model == "log_linear"
            lines = tuple(RatePhiLine(float(r["a"]), float(r["b"]), log) for r in d["rate_phi"])
            known = {"codec_weights_sha256", "scales", "num_qualities", "task_rate", "rate_phi", "rate_model"}
            return cls(
                alpha=float(d["task_rate"]["alpha"]),
                beta=float(d["task_rate"]["beta"]),
                rate_phi=lines,
                scales=tuple(d["scales"]),
                num_qualities=int(d["num_qualities"]),
                codec_weights_sha256=str(d["codec_weights_sha256"]),
                record={k: v for k, v in d.items() if k not in known},
                rate_model=rate_model,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise EncodeError(f"not a file of fitted MFIBA models: {type(e).__name__} {e}") from None


def fitted_path(weights: str | Path) -> Path:
    """NAME.mfiba.json beside NAME.pt."""
    p = Path(weights)
    return p.with_name(p.stem + ".mfiba.json")


def load_fitted(codec_weights: str | Path | None, model_id: Any, digest: bytes) -> FittedModels:
    """The fitted models beside the weights (the shipped ones for `codec_weights` None),
    checked against the weights' sha256 `digest`."""
    from codec.models.registry import entry

    pt = Path(codec_weights) if codec_weights is not None else entry(model_id).weights
    path = fitted_path(pt)
    if not path.is_file():
        raise EncodeError(f"MFIBA needs the models fitted for {pt.name}: {path.name} not found (tools/fit_mfiba.py)")
    try:
        fitted = FittedModels.from_json(json.loads(path.read_text(encoding="utf-8")))
    except ValueError:
        raise EncodeError(f"{path}: not JSON") from None
    if fitted.codec_weights_sha256 != digest.hex():
        raise EncodeError(f"{path.name} was fitted for other weights than {pt.name} (sha256 differs)")
    return fitted


# -- one image's precoding -------------------------------------------------------------------


class ScaleCoder(Protocol):
    """What the allocator needs of a codec: scale i of an image coded alone at quality
    index q (0 the lowest rate): its exact bits and the reconstruction the decoder gives."""

    num_qualities: int

    def scale_bits(self, i: int, x: torch.Tensor, q: int) -> int: ...

    def scale_rec(self, i: int, x: torch.Tensor, q: int) -> torch.Tensor: ...


class LearnedScaleCoder:
    """The ScaleCoder of a per-scale learned codec (learned_ps): q is phi, the bits are the
    rANS strings' bytes, the reconstruction the fixed-point decoder's."""

    def __init__(self, model: PerScaleCodec) -> None:
        self.model = model
        self.num_qualities = int(model.cfg.num_qualities)

    def scale_bits(self, i: int, x: torch.Tensor, q: int) -> int:
        c = self.model.compress_scale(i, x, q)
        return 8 * (len(c.z_string) + len(c.y_string))

    def scale_rec(self, i: int, x: torch.Tensor, q: int) -> torch.Tensor:
        return self.model.forward_quantised_scale(i, x, q)


def as_scale_coder(coder: Any) -> ScaleCoder:
    """A ScaleCoder as is; a per-scale learned codec (compress_scale) wrapped."""
    if hasattr(coder, "scale_bits") and hasattr(coder, "scale_rec"):
        return coder
    if hasattr(coder, "compress_scale"):
        return LearnedScaleCoder(coder)
    raise TypeError(f"{type(coder).__name__} is neither a ScaleCoder nor a per-scale learned codec")


class ProbeStore:
    """What coding an image's scales computed, shared by probes of the same image: bits and
    reconstruction per (scale, phi), task losses per combination (an evaluation that tries
    many targets on one image computes each once)."""

    def __init__(self) -> None:
        self.bits: dict[tuple[int, int], int] = {}
        self.recs: dict[tuple[int, int], torch.Tensor] = {}
        self.losses: dict[tuple[int | None, ...], float] = {}
        self.compress_calls = 0


class ImageProbe:
    """An image's scales, coded on demand at any (scale, phi) by a ScaleCoder (or a per-scale
    learned codec): the exact bits and the exact reconstruction the decoder gives; the task loss of
    any combination against NN part 2's output on the uncompressed features. What the probe
    has measured (`measured`) is its own, so an allocation depends only on what it asked for;
    the computation behind it may come from a shared `store`."""

    def __init__(
        self,
        model: PerScaleCodec | ScaleCoder,
        xs: list[torch.Tensor],
        task_loss: Callable[[list], float],
        store: ProbeStore | None = None,
    ) -> None:
        self.model, self.xs, self._task = model, xs, task_loss
        self.coder = as_scale_coder(model)
        self.areas = [int(x.shape[-2] * x.shape[-1]) for x in xs]
        self.store = store if store is not None else ProbeStore()
        self._measured: set[tuple[int, int]] = set()
        self.compress_calls = 0  # bits this probe asked for (as a fresh encoder would compute them)

    @property
    def num_scales(self) -> int:
        return len(self.xs)

    def bits(self, i: int, phi: int) -> int:
        key = (int(i), int(phi))
        if key not in self.store.bits:
            self.store.bits[key] = int(self.coder.scale_bits(i, self.xs[i], phi))
            self.store.compress_calls += 1
        if key not in self._measured:
            self._measured.add(key)
            self.compress_calls += 1
        return self.store.bits[key]

    def measured(self, i: int) -> dict[int, int]:
        """phi -> bits of scale i measured so far by this probe."""
        return {p: self.store.bits[(j, p)] for (j, p) in sorted(self._measured) if j == i}

    def rate(self, i: int, phi: int) -> float:
        """Measured R_i(phi): bits per position of scale i."""
        return self.bits(i, phi) / self.areas[i]

    def rec(self, i: int, phi: int) -> torch.Tensor:
        key = (int(i), int(phi))
        if key not in self.store.recs:
            self.store.recs[key] = self.coder.scale_rec(i, self.xs[i], phi)
        return self.store.recs[key]

    def loss(self, phis: Sequence[int | None]) -> float:
        """The task loss of the scales at these quality indices (None: uncompressed)."""
        key = tuple(None if p is None else int(p) for p in phis)
        if key not in self.store.losses:
            feats = [x if p is None else self.rec(i, p) for i, (x, p) in enumerate(zip(self.xs, key))]
            self.store.losses[key] = float(self._task(feats))
        return self.store.losses[key]

    def scale_loss(self, i: int, phi: int) -> float:
        """The task loss with scale i alone at quality phi (d_i of MFIP and of the fits)."""
        return self.loss([phi if j == i else None for j in range(self.num_scales)])


def task_loss_function(network: Any, split: str, xs: list[torch.Tensor]) -> Callable[[list], float]:
    """features (list per scale) -> the distillation loss through NN part 2's task heads
    against the uncompressed features `xs` (codec/training/task.py); EncodeError for a network
    whose heads it does not know."""
    import torch

    from codec.training.task import TaskLossError, task_loss_for

    try:
        task: Any = task_loss_for(network, split)  # its teacher( ) / forward( ) are the loss's own
    except TaskLossError as e:
        raise EncodeError(f"MFIBA needs a task loss for {getattr(network, 'name', network)}/{split}: {e}") from None
    task.eval()
    with torch.no_grad():
        teacher = task.teacher(xs)

    def loss(feats: list) -> float:
        with torch.no_grad():
            return float(task(feats, teacher)[0][0])

    return loss


# -- MFIP -----------------------------------------------------------------------------------


def normalised_importance(d: np.ndarray) -> np.ndarray:
    """d (scales x levels) task losses -> w (scales,): every level's column normalised to
    sum 1 (uniform where a column is all zero), averaged over the levels."""
    d = np.maximum(np.asarray(d, dtype=np.float64), 0.0)
    k = d.shape[0]
    cols = d.sum(axis=0, keepdims=True)
    w = np.where(cols > 0, d / np.where(cols > 0, cols, 1.0), 1.0 / k)
    return w.mean(axis=1)


def mfip(probe: ImageProbe, levels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(w, d): the importance weights and the measured loss matrix d[i, j] (scale i alone at
    levels[j])."""
    if not levels:
        raise EncodeError("MFIP needs at least one precoding level")
    d = np.array([[probe.scale_loss(i, p) for p in levels] for i in range(probe.num_scales)])
    return normalised_importance(d), d


# -- models and the allocation -----------------------------------------------------------------


def area_ratios(areas: Sequence[int]) -> np.ndarray:
    """k_i = A_0 / A_i (1 for the finest scale)."""
    a = np.asarray(areas, dtype=np.float64)
    return a[0] / a


def closed_form_rates(w: np.ndarray, alpha: float, beta: float, lam: float, k: np.ndarray) -> np.ndarray:
    """R~_i = (w_i alpha beta k_i / lambda')^(1 / (beta + 1)), bits per position of scale i."""
    w = np.maximum(np.asarray(w, dtype=np.float64), 0.0)
    return (w * alpha * beta * np.asarray(k, dtype=np.float64) / lam) ** (1.0 / (beta + 1.0))


def snap(phi: float, num_qualities: int) -> int:
    """A quality index on the model's grid (rounded, clipped)."""
    if not math.isfinite(phi):
        return num_qualities - 1 if phi > 0 else 0
    return int(min(max(round(phi), 0), num_qualities - 1))


def phis_for_rates(rates: np.ndarray, lines: Sequence[RatePhiLine], num_qualities: int) -> list[int]:
    return [snap(ln.phi(float(r)), num_qualities) for r, ln in zip(rates, lines)]


def fit_line(phis: Sequence[float], rates: Sequence[float], prior: RatePhiLine) -> RatePhiLine:
    """Least-squares line through measured (phi, R) points (through (phi, ln R) for a log
    prior); with one distinct phi, the prior's slope through that point (with none, the prior)."""
    x, y = np.asarray(phis, dtype=np.float64), np.asarray(rates, dtype=np.float64)
    if prior.log:
        keep = y > 0
        x, y = x[keep], np.log(y[keep])
    if len(set(x.tolist())) >= 2:
        a, b = np.polyfit(x, y, 1)
        if a > 0:
            return RatePhiLine(float(a), float(b), prior.log)
    if len(x):
        return RatePhiLine(prior.a, float(np.mean(y - prior.a * x)), prior.log)
    return prior


def predicted_bits(probe: ImageProbe, i: int, phi: int, line: RatePhiLine) -> float:
    """Bits of scale i at phi: measured, else interpolated between the nearest measured levels
    on either side (linearly; geometrically for a log line), else along `line` from the
    nearest measured level."""
    m = probe.measured(i)
    if phi in m:
        return float(m[phi])
    area = probe.areas[i]
    below = [p for p in m if p < phi]
    above = [p for p in m if p > phi]
    if below and above:
        lo, hi = max(below), min(above)
        t = (phi - lo) / (hi - lo)
        if line.log and m[lo] > 0 and m[hi] > 0:
            return float(m[lo] ** (1 - t) * m[hi] ** t)
        return (1 - t) * m[lo] + t * m[hi]
    if below or above:
        ref = max(below) if below else min(above)
        if line.log:
            return max(line.step(m[ref], phi - ref), 0.0)
        return max(m[ref] + line.a * (phi - ref) * area, 0.0)
    return max(line.rate(phi) * area, 0.0)


@dataclass
class Plan:
    """The chosen allocation and how it was found."""

    phis: list[int]
    lam: float | None
    weights: list[float]
    latent_bits: int | None  # exact when known (a target search measures its result)
    details: dict = field(default_factory=dict)


def model_distortion(w: np.ndarray, fitted: FittedModels, rates: Sequence[float]) -> float:
    r = np.maximum(np.asarray(rates, dtype=np.float64), 1e-6)
    return float(np.sum(np.asarray(w) * fitted.alpha * r ** (-fitted.beta)))


class Allocator:
    """The allocation of one image for given weights: closed form + rate-phi lines, and the
    search for a target."""

    def __init__(self, probe: ImageProbe, fitted: FittedModels, lines: Sequence[RatePhiLine]) -> None:
        self.probe, self.fitted, self.lines = probe, fitted, list(lines)
        self.k = area_ratios(probe.areas)
        self.q = fitted.num_qualities

    def bits_of(self, phis: Sequence[int]) -> float:
        return sum(predicted_bits(self.probe, i, p, ln) for i, (p, ln) in enumerate(zip(phis, self.lines)))

    def rates_of(self, phis: Sequence[int]) -> list[float]:
        return [predicted_bits(self.probe, i, p, ln) / a
                for i, (p, ln, a) in enumerate(zip(phis, self.lines, self.probe.areas))]  # fmt: skip

    def for_lambda(self, w: np.ndarray, lam: float) -> list[int]:
        rates = closed_form_rates(w, self.fitted.alpha, self.fitted.beta, lam, self.k)
        return phis_for_rates(rates, self.lines, self.q)

    def bisect(self, w: np.ndarray, target_bits: float) -> tuple[float, list[int]]:
        """lambda' whose allocation's predicted bits are closest to the target (bisection on
        log lambda'; the allocation's bits do not increase with lambda')."""
        lo, hi = math.log(LAMBDA_RANGE[0]), math.log(LAMBDA_RANGE[1])
        if self.bits_of(self.for_lambda(w, math.exp(lo))) <= target_bits:
            return math.exp(lo), self.for_lambda(w, math.exp(lo))
        if self.bits_of(self.for_lambda(w, math.exp(hi))) > target_bits:
            return math.exp(hi), self.for_lambda(w, math.exp(hi))
        for _ in range(80):  # invariant: bits(lo) > target >= bits(hi)
            mid = 0.5 * (lo + hi)
            if self.bits_of(self.for_lambda(w, math.exp(mid))) > target_bits:
                lo = mid
            else:
                hi = mid
        over, under = self.for_lambda(w, math.exp(lo)), self.for_lambda(w, math.exp(hi))
        if abs(self.bits_of(over) - target_bits) < abs(self.bits_of(under) - target_bits):
            return math.exp(lo), over
        return math.exp(hi), under

    def refine(self, w: np.ndarray, phis: list[int], target_bits: float) -> list[int]:
        """Among phis and its neighbours (every phi_i +-1): the lowest model distortion within
        RATE_TOLERANCE of the target, or the closest to the target if none is."""
        steps = [(-1, 0, 1)] * len(phis) if len(phis) <= 5 else [(0,)] * len(phis)
        cands = {tuple(min(max(p + d, 0), self.q - 1) for p, d in zip(phis, ds)) for ds in itertools.product(*steps)}
        scored = [(c, self.bits_of(c)) for c in sorted(cands)]
        inside = [(c, b) for c, b in scored if abs(b / target_bits - 1) <= RATE_TOLERANCE]
        if inside:
            return list(min(inside, key=lambda cb: (model_distortion(w, self.fitted, self.rates_of(cb[0])), cb[1]))[0])
        return list(min(scored, key=lambda cb: (abs(cb[1] - target_bits), cb[1]))[0])

    def for_target(self, w: np.ndarray, target_bits: float) -> tuple[float, list[int]]:
        """The search of a target: bisection, refinement, the chosen rates measured; again
        until the chosen allocation's bits are all measured."""
        lam, phis = self.bisect(w, target_bits)
        for _ in range(MAX_PASSES):
            phis = self.refine(w, phis, target_bits)
            unmeasured = [(i, p) for i, p in enumerate(phis) if p not in self.probe.measured(i)]
            if not unmeasured:
                break
            for i, p in unmeasured:
                self.probe.bits(i, p)
            lam, phis = self.bisect(w, target_bits)
        return lam, phis

    def uniform_for_target(self, target_bits: float) -> list[int]:
        """One phi for every scale, its bits closest to the target (measured, as for_target)."""
        k = self.probe.num_scales
        for _ in range(MAX_PASSES + 1):
            best = min(range(self.q), key=lambda p: (abs(self.bits_of([p] * k) - target_bits), p))
            unmeasured = [i for i in range(k) if best not in self.probe.measured(i)]
            if not unmeasured:
                return [best] * k
            for i in unmeasured:
                self.probe.bits(i, best)
        return [best] * k


def image_lines(probe: ImageProbe, fitted: FittedModels) -> list[RatePhiLine]:
    """The rate-phi line of every scale refitted on the image's measured rates (the offline
    line where it measured none)."""
    out = []
    for i, prior in enumerate(fitted.rate_phi):
        m = probe.measured(i)
        out.append(fit_line(list(m), [b / probe.areas[i] for b in m.values()], prior))
    return out


def fine_tune(
    probe: ImageProbe,
    w: np.ndarray,
    choose: Callable[[np.ndarray], tuple[float | None, list[int]]],
    objective: Callable[[list[int], float | None], float],
    feasible: Callable[[list[int]], bool],
) -> tuple[np.ndarray, int]:
    """Coordinate line search on the weights in steps of FT_STEP within +-FT_SPAN: the weights
    whose (feasible) allocation has the lowest objective. Returns (weights, candidates tried)."""
    best_w = np.asarray(w, dtype=np.float64)
    lam0, phis0 = choose(best_w)
    best = objective(phis0, lam0)
    tried = 0
    n = int(round(FT_SPAN / FT_STEP))
    for i in range(len(best_w)):
        base = best_w.copy()
        for s in range(-n, n + 1):
            if s == 0:
                continue
            cand = base.copy()
            cand[i] = max(cand[i] + s * FT_STEP, 1e-3)
            cand /= cand.sum()
            lam, phis = choose(cand)
            tried += 1
            if not feasible(phis):
                continue
            value = objective(phis, lam)
            if value < best - 1e-12:
                best, best_w = value, cand
    return best_w, tried


def exhaustive_grid_check(num_qualities: int) -> None:
    if num_qualities > EXHAUSTIVE_MAX_Q:
        raise EncodeError(
            f"--allocation exhaustive codes every scale at every quality index: at most {EXHAUSTIVE_MAX_Q} "
            f"indices, this codec has {num_qualities} (use mfiba or mfiba_ft)"
        )


def exhaustive(probe: ImageProbe, target_bits: float | None, lam: float | None, k: np.ndarray) -> Plan:
    """The exhaustive variant (module docstring): every scale measured at every quality index,
    the best combination by the measured separable loss, at a target of latent bits or a lambda'."""
    q, n = probe.coder.num_qualities, probe.num_scales
    exhaustive_grid_check(q)
    d = np.array([[probe.scale_loss(i, p) for p in range(q)] for i in range(n)])
    bits = np.array([[probe.bits(i, p) for p in range(q)] for i in range(n)], dtype=np.float64)
    combos = np.array(list(itertools.product(range(q), repeat=n)))  # (q^n, n)
    rows = np.arange(n)
    loss = d[rows, combos].sum(axis=1)
    total = bits[rows, combos].sum(axis=1)
    if target_bits is not None:
        fits = np.flatnonzero(total <= target_bits)
        if fits.size == 0:
            best = int(np.argmin(total))
        else:
            best = int(fits[np.lexsort((total[fits], loss[fits]))[0]])  # the lowest loss, then the fewest bits
    else:
        rates = bits / np.array(probe.areas, dtype=np.float64)[:, None]
        cost = loss + float(lam) * (rates[rows, combos] / np.asarray(k)).sum(axis=1)  # type: ignore[arg-type]
        best = int(np.lexsort((total, cost))[0])
    phis = [int(p) for p in combos[best]]
    w = normalised_importance(d)
    details = {"measured_losses": d.round(6).tolist(), "compress_calls": probe.compress_calls}
    return Plan(phis, lam, w.tolist(), int(total[best]), details)


def allocate(
    model: PerScaleCodec | ScaleCoder,
    fitted: FittedModels,
    arrays: list[tuple[str, np.ndarray]],
    context: EncodeContext,
    *,
    target_bits: float | None,
    lam: float | None,
    allocation: str,
    levels: Sequence[int],
    store: ProbeStore | None = None,
    task_loss: Callable[[list], float] | None = None,
) -> Plan:
    """The quality index of every scale of one image (`model`: a ScaleCoder or a per-scale
    learned codec): MFIBA (allocation "mfiba"), its
    fine-tuned variant ("mfiba_ft"), the exhaustive search on measured losses ("exhaustive")
    or one phi for every scale ("uniform", a target only),
    at a target of latent bits or at a lambda'. `store` and `task_loss` (of the same image)
    let an evaluation share the computation between targets; the result is the same."""
    import torch

    if (target_bits is None) == (lam is None):
        raise EncodeError("MFIBA needs exactly one of a target rate and a lambda'")
    names = [n for n, _ in arrays]
    coder = as_scale_coder(model)
    if tuple(names) != fitted.scales or fitted.num_qualities != coder.num_qualities:
        raise EncodeError(f"the fitted MFIBA models are for scales {list(fitted.scales)}, not {names}")
    if allocation not in ("uniform", "mfiba", "mfiba_ft", "exhaustive"):
        raise EncodeError(f"unknown allocation {allocation!r}")
    if allocation == "exhaustive":  # before any precoding
        exhaustive_grid_check(coder.num_qualities)
    xs = [torch.from_numpy(a).unsqueeze(0) for _, a in arrays]
    if target_bits is not None and target_bits <= 0:
        # a target below the container's header alone: like any target below the lowest
        # allocation, the closest reachable rate is every scale at phi 0
        probe = ImageProbe(coder, xs, lambda feats: 0.0, store)
        phis = [0] * len(xs)
        bits = sum(probe.bits(i, 0) for i in range(len(xs)))
        return Plan(phis, None, [1.0 / len(xs)] * len(xs), int(bits),
                    {"compress_calls": probe.compress_calls, "unreachable_target": True})  # fmt: skip
    if task_loss is None:
        task_loss = task_loss_function(context.network, context.split, xs)
    probe = ImageProbe(coder, xs, task_loss, store)
    for i in range(len(xs)):  # MFIP's precoding also measures the rates at its levels
        for p in levels:
            probe.bits(i, p)
    alloc = Allocator(probe, fitted, image_lines(probe, fitted))
    if allocation == "uniform":
        if target_bits is None:
            raise EncodeError("--allocation uniform needs --target-bpp (one phi for every scale: give --phi)")
        phis = alloc.uniform_for_target(target_bits)
        return Plan(phis, None, [1.0 / len(xs)] * len(xs), int(alloc.bits_of(phis)),
                    {"compress_calls": probe.compress_calls})  # fmt: skip
    if allocation == "exhaustive":
        return exhaustive(probe, target_bits, lam, alloc.k)
    w, d = mfip(probe, levels)

    def choose(weights: np.ndarray) -> tuple[float | None, list[int]]:
        if target_bits is not None:
            return alloc.for_target(weights, target_bits)
        return lam, alloc.for_lambda(weights, float(lam))  # type: ignore[arg-type]

    lam_used, phis = choose(w)
    details: dict[str, Any] = {"mfip_losses": d.round(6).tolist(), "mfip_weights": w.round(4).tolist()}
    if allocation == "mfiba_ft":
        base_bits = alloc.bits_of(phis)
        budget = max(base_bits, target_bits) if target_bits is not None else math.inf

        def objective(ph: list[int], lam_c: float | None) -> float:
            value = probe.loss(ph)
            if target_bits is None:
                value += float(lam) * float(np.sum(np.asarray(alloc.rates_of(ph)) / alloc.k))  # type: ignore[arg-type]
            return value

        w, tried = fine_tune(probe, w, choose, objective, lambda ph: alloc.bits_of(ph) <= budget)
        lam_used, phis = choose(w)
        details.update(ft_weights=w.round(4).tolist(), ft_candidates=tried)
    if target_bits is not None:  # the search measured the result
        for i, p in enumerate(phis):
            probe.bits(i, p)
    details["compress_calls"] = probe.compress_calls
    exact = all(p in probe.measured(i) for i, p in enumerate(phis))
    return Plan(phis, lam_used, w.tolist(), int(alloc.bits_of(phis)) if exact else None, details)


__all__ = [
    "Allocator",
    "FittedModels",
    "ImageProbe",
    "LearnedScaleCoder",
    "Plan",
    "ProbeStore",
    "RATE_MODELS",
    "RatePhiLine",
    "ScaleCoder",
    "allocate",
    "area_ratios",
    "as_scale_coder",
    "closed_form_rates",
    "exhaustive",
    "fine_tune",
    "fit_line",
    "fitted_path",
    "image_lines",
    "load_fitted",
    "mfip",
    "normalised_importance",
    "phis_for_rates",
    "predicted_bits",
    "snap",
    "task_loss_function",
]
