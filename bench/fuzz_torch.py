"""Fuzz campaign for the torch frontend (issue 18): small random modules from a grammar of layers
and shapes, run by ``softipu.torch`` and by eager PyTorch, for inference and for two steps of SGD
training; any mismatch or internal error is a bug, saved as a reproducer.

The grammar: an input that is a batch of vectors ``(B, F)``, of sequences ``(B, T, F)`` or of
images ``(B, C, H, W)``; then 1-5 layers that keep the kind (Linear, ReLU, GELU, Tanh, Sigmoid,
LayerNorm, Softmax, a residual Linear; Conv2d with random kernel/stride/padding, BatchNorm2d,
MaxPool2d, AvgPool2d for images; Dropout for inference); then a flatten (or a mean over time) and
a Linear to 3 classes. Training returns the cross-entropy loss beside the logits.

Outcomes are counted as ``ok``, ``refused`` (a softipu error: the model is not supported, or too
big for the target), ``mismatch_inference`` / ``mismatch_training`` (values or weights differ from
eager beyond fp32 tolerances), ``other`` (any other exception: a bug) and ``hang`` (over the
CPU-time bound, bench/_fuzz_common). Each bad input is written to ``--out`` as a JSON reproducer
(the spec, the seed and what differed) that ``--replay FILE`` runs again.

    .venv/bin/python bench/fuzz_torch.py --count 100000 --seconds 3600 --seed 0 --out /tmp/fuzz_torch
"""

from __future__ import annotations

import contextlib
import copy
import json
import random
import sys
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _fuzz_common import alarm_handler, bounded, campaign_parser  # noqa: E402

BAD = ("mismatch_inference", "mismatch_training", "other", "hang")
RTOL, ATOL = 1e-4, 1e-4  # fp32 against eager: accumulation orders differ, nothing else may
LR = 0.05


# -- the grammar ---------------------------------------------------------------------------------
def random_spec(rng: random.Random) -> dict[str, Any]:
    """A model as data: ``{"input": [...], "layers": [[name, *args], ...]}`` (JSON for reproducers)."""
    kind = rng.choice(("vector", "sequence", "image"))
    batch = rng.choice((1, 2, 4))
    if kind == "image":
        shape = [batch, rng.choice((1, 2, 3)), rng.choice((4, 5, 6, 8)), rng.choice((4, 5, 6, 8))]
    elif kind == "sequence":
        shape = [batch, rng.choice((1, 3, 4)), rng.choice((2, 4, 6))]
    else:
        shape = [batch, rng.choice((1, 3, 5, 8, 16))]
    layers: list[list[Any]] = []
    cur = list(shape)
    for _ in range(rng.randint(1, 5)):
        layer = _image_layer(rng, cur) if kind == "image" else _feature_layer(rng, cur[-1])
        if layer is None:
            continue
        layers.append(layer)
        cur = _shape_after(layer, cur)
    layers.append(["flatten"] if kind != "sequence" else ["mean_time"])
    features = cur[1] * cur[2] * cur[3] if kind == "image" else cur[-1]
    layers.append(["linear", features, 3, rng.random() < 0.8])
    return {"input": shape, "layers": layers}


def _feature_layer(rng: random.Random, f: int) -> list[Any]:
    pick = rng.choice(("linear", "linear", "relu", "gelu", "tanh", "sigmoid", "layer_norm", "softmax",
                       "residual", "dropout", "leaky_relu", "silu", "elu", "log_softmax", "hardtanh",
                       "gelu_tanh"))
    if pick == "linear":
        return ["linear", f, rng.choice((1, 2, 4, 7, 16)), rng.random() < 0.8]
    if pick == "layer_norm":
        return ["layer_norm", f, rng.random() < 0.7]
    if pick == "residual":
        return ["residual", f]
    if pick == "dropout":
        return ["dropout", rng.choice((0.1, 0.5))]
    return [pick]


def _image_layer(rng: random.Random, shape: list[int]) -> list[Any] | None:
    _, c, h, w = shape
    pick = rng.choice(("conv", "conv", "relu", "batch_norm", "max_pool", "avg_pool", "group_norm",
                       "adaptive_avg_pool", "max_pool_padded"))
    if pick == "conv":
        k = rng.choice((1, 2, 3))
        stride, pad = rng.choice((1, 1, 2)), rng.choice((0, 0, 1))
        if (h + 2 * pad - k) // stride + 1 < 1 or (w + 2 * pad - k) // stride + 1 < 1:
            return None
        return ["conv", c, rng.choice((1, 2, 4)), k, stride, pad, rng.random() < 0.7]
    if pick in ("max_pool", "avg_pool"):
        return [pick, 2] if h >= 2 and w >= 2 else None
    if pick == "max_pool_padded":
        return ["max_pool_padded", 3, 2, 1] if h >= 2 and w >= 2 else None
    if pick == "batch_norm":
        return ["batch_norm", c]
    if pick == "group_norm":
        return ["group_norm", 1 if c % 2 else 2, c]
    if pick == "adaptive_avg_pool":
        return ["adaptive_avg_pool", 1]
    return [pick]


def _shape_after(layer: list[Any], shape: list[int]) -> list[int]:
    name = layer[0]
    if name == "linear":
        return shape[:-1] + [layer[2]]
    if name == "conv":
        _, _, out, k, stride, pad, _ = layer
        h, w = ((d + 2 * pad - k) // stride + 1 for d in shape[2:])
        return [shape[0], out, h, w]
    if name in ("max_pool", "avg_pool"):
        return shape[:2] + [shape[2] // 2, shape[3] // 2]
    if name == "max_pool_padded":
        return shape[:2] + [(d + 2 - 3) // 2 + 1 for d in shape[2:]]
    if name == "adaptive_avg_pool":
        return shape[:2] + [1, 1]
    return shape


def build(spec: dict[str, Any], seed: int):
    """The eager module of ``spec``: ``forward(x, y) -> (logits, cross-entropy loss)``."""
    import torch
    from torch import nn

    class Residual(nn.Module):
        def __init__(self, f: int) -> None:
            super().__init__()
            self.fc = nn.Linear(f, f)

        def forward(self, x):
            return x + self.fc(x)

    class MeanTime(nn.Module):
        def forward(self, x):
            return x.mean(dim=1)

    make = {
        "linear": lambda f, o, bias: nn.Linear(f, o, bias=bias), "relu": nn.ReLU, "gelu": nn.GELU,
        "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "softmax": lambda: nn.Softmax(dim=-1),
        "layer_norm": lambda f, affine: nn.LayerNorm(f, elementwise_affine=affine), "residual": Residual,
        "dropout": nn.Dropout, "flatten": nn.Flatten, "mean_time": MeanTime,
        "conv": lambda c, o, k, s, p, bias: nn.Conv2d(c, o, k, stride=s, padding=p, bias=bias),
        "batch_norm": nn.BatchNorm2d, "max_pool": nn.MaxPool2d, "avg_pool": nn.AvgPool2d,
        "leaky_relu": lambda: nn.LeakyReLU(0.1), "silu": nn.SiLU, "elu": nn.ELU,
        "log_softmax": lambda: nn.LogSoftmax(dim=-1), "hardtanh": nn.Hardtanh,
        "gelu_tanh": lambda: nn.GELU(approximate="tanh"), "group_norm": nn.GroupNorm,
        "adaptive_avg_pool": nn.AdaptiveAvgPool2d,
        "max_pool_padded": lambda k, s, p: nn.MaxPool2d(k, stride=s, padding=p),
    }

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(*(make[name](*args) for name, *args in spec["layers"]))

        def forward(self, x, y):
            out = self.body(x)
            return out, nn.functional.cross_entropy(out, y)

    torch.manual_seed(seed)
    model = Model()
    x = torch.randn(*spec["input"])
    y = torch.randint(0, 3, (spec["input"][0],))
    return model, x, y


# -- torch's listing of its composite ops, shared between inputs ----------------------------------
@contextlib.contextmanager
def shared_cia_listing() -> Iterator[None]:
    """Within it, torch.export's list of every CompositeImplicitAutograd op is made once, not again
    by torch for each export and each decomposition table it materialises (~0.4 s of CPU each, two
    or three an input: a quarter of the campaign); it is made again when ops, namespaces or
    composite kernels have been registered since. Each input still goes through ``torch.export``
    and the whole frontend; torch's own function is put back on leaving."""
    import torch
    import torch._export.utils as utils
    import torch.export.decomp_utils as decomp_utils
    import torch.export.exported_program as exported_program

    modules = (utils, decomp_utils, exported_program)
    plain = [m._collect_all_valid_cia_ops for m in modules]
    made: dict[tuple[int, int, int], set] = {}

    def listing() -> set:
        key = (len(torch._C._dispatch_get_all_op_names()), len(torch.ops._dir),
               len(torch._C._dispatch_get_registrations_for_dispatch_key("CompositeImplicitAutograd")))
        if key not in made:
            made.clear()
            made[key] = plain[0]()
        return made[key]

    for m in modules:
        m._collect_all_valid_cia_ops = listing
    try:
        yield
    finally:
        for m, fn in zip(modules, plain, strict=True):
            m._collect_all_valid_cia_ops = fn


# -- one input -----------------------------------------------------------------------------------
def _options(spec: dict[str, Any]):
    import softipu as sp
    import softipu.torch as st

    return st.Options(target=sp.targets.ipu_model(tiles=8, bytes_per_tile=512 * 1024))


def _differs(got, want) -> str:
    import torch

    got, want = got.detach().to(torch.float64), want.detach().to(torch.float64)
    if got.shape != want.shape:
        return f"shape {tuple(got.shape)} vs eager {tuple(want.shape)}"
    err = (got - want).abs()
    bound = ATOL + RTOL * want.abs()
    if bool(torch.isnan(got).ne(torch.isnan(want)).any()) or bool((err > bound).any()):
        return f"max error {float(err.nan_to_num(float('inf')).max()):.3g} (bound {float(bound.max()):.3g})"
    return ""


def check_inference(spec: dict[str, Any], seed: int) -> str:
    import torch

    import softipu.torch as st

    model, x, y = build(spec, seed)
    model.eval()
    with torch.no_grad():
        want = model(x, y)
    got = st.inference_model(model, _options(spec))(x, y)
    for name, g, w in zip(("logits", "loss"), got, want, strict=True):
        bad = _differs(g, w)
        if bad:
            return f"inference {name}: {bad}"
    return ""


def check_training(spec: dict[str, Any], seed: int) -> str:
    import torch

    import softipu.torch as st

    if any(layer[0] == "dropout" for layer in spec["layers"]):
        return ""  # random masks: eager and IPU draw different ones
    model, x, y = build(spec, seed)
    eager = copy.deepcopy(model)
    trained = st.training_model(model, torch.optim.SGD(model.parameters(), lr=LR), _options(spec))
    opt = torch.optim.SGD(eager.parameters(), lr=LR)
    for step in range(2):
        loss = trained(x, y)[1]
        opt.zero_grad()
        want = eager(x, y)[1]
        want.backward()
        opt.step()
        bad = _differs(loss, want.detach())
        if bad:
            return f"training loss of step {step}: {bad}"
    trained.copy_weights_to_host()
    for (name, p), q in zip(model.named_parameters(), eager.parameters(), strict=True):
        bad = _differs(p, q)
        if bad:
            return f"training weight {name} after 2 SGD steps: {bad}"
    return ""


def run_one(spec: dict[str, Any], seed: int, limit: float, verbose: bool = False) -> tuple[str, str]:
    """(outcome, detail) of one spec, under a bound of ``limit`` CPU seconds (bench/_fuzz_common;
    needs its ``alarm_handler``)."""
    from softipu.errors import SoftIPUError

    def body() -> tuple[str, str]:
        bad = check_inference(spec, seed)
        if bad:
            return "mismatch_inference", bad
        bad = check_training(spec, seed)
        return ("mismatch_training" if bad else "ok"), bad

    value, exc, hang = bounded(body, limit)
    if hang:
        return "hang", f"over {limit} CPU s"
    if exc is None:
        return value
    if isinstance(exc, SoftIPUError):
        return "refused", f"{type(exc).__name__}: {str(exc)[:200]}"
    frame = traceback.extract_tb(exc.__traceback__)[-1]
    if verbose:
        traceback.print_exception(exc)
    return "other", f"{type(exc).__name__}: {str(exc)[:200]} [{Path(frame.filename).name}:{frame.lineno}]"


def campaign(count: int, seconds: float, seed: int, limit: float = 120.0, first: int = 0,
             out: Path | None = None, verbose: bool = False, share: bool = True) -> dict[str, Any]:
    import logging

    logging.getLogger("softipu").setLevel(logging.ERROR)
    counts: Counter = Counter()
    refusals: Counter = Counter()
    examples: list[dict[str, Any]] = []
    end = time.monotonic() + seconds
    tried = first
    sharing = shared_cia_listing() if share else contextlib.nullcontext()
    with warnings.catch_warnings(), alarm_handler(), sharing:
        warnings.simplefilter("ignore")
        while tried < first + count and time.monotonic() < end:
            spec = random_spec(random.Random(f"{seed}-{tried}"))
            outcome, detail = run_one(spec, tried, limit, verbose)
            counts[outcome] += 1
            if outcome == "refused":
                refusals[detail[:80]] += 1
            if verbose:
                print(tried, outcome, json.dumps(spec), detail, flush=True)
            if outcome in BAD:
                case = {"outcome": outcome, "detail": detail, "spec": spec, "model_seed": tried,
                        "input": tried}
                if out is not None:
                    out.mkdir(parents=True, exist_ok=True)
                    (out / f"{seed}-{tried}.json").write_text(json.dumps(case, indent=1))
                if len(examples) < 8:
                    examples.append(case)
            tried += 1
    return {"bench": "fuzz_torch", "seed": seed, "tried": tried - first, "ok": counts["ok"],
            "refused": counts["refused"], "mismatch_inference": counts["mismatch_inference"],
            "mismatch_training": counts["mismatch_training"], "other_exceptions": counts["other"],
            "hangs": counts["hang"], "top_refusals": dict(refusals.most_common(8)), "examples": examples}


def replay(path: Path, limit: float) -> dict[str, Any]:
    case = json.loads(path.read_text())
    with alarm_handler():
        outcome, detail = run_one(case["spec"], case["model_seed"], limit, verbose=True)
    return {"bench": "fuzz_torch", "replay": str(path), "outcome": outcome, "detail": detail}


def main(argv: list[str] | None = None) -> int:
    parser = campaign_parser(__doc__)
    parser.set_defaults(limit=120.0)  # an input exports, compiles and trains a model
    parser.add_argument("--out", type=Path, default=None, help="folder for reproducers of bad inputs")
    parser.add_argument("--replay", type=Path, default=None, help="run one saved reproducer again")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--no-share", action="store_true", help="let torch list its composite ops afresh "
                        "at each export (shared_cia_listing off)")
    args = parser.parse_args(argv)
    if args.replay is not None:
        result = replay(args.replay, args.limit)
        print(json.dumps(result))
        return 0 if result["outcome"] in ("ok", "refused") else 1
    result = campaign(args.count, args.seconds, args.seed, args.limit, args.first, args.out, args.verbose,
                      not args.no_share)
    print(json.dumps(result))
    return 1 if any(result[k] for k in ("mismatch_inference", "mismatch_training", "other_exceptions",
                                        "hangs")) else 0


if __name__ == "__main__":
    sys.exit(main())
