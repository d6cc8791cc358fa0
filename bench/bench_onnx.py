"""ONNX on a simulated IPU: a ResNet-50-shaped model (built in code, random weights, no download)
exported with ``torch.onnx.export``, loaded, compiled and run by ``softipu.onnx.InferenceSession``
beside onnxruntime on the same machine in the same run.

    python bench/bench_onnx.py [--image 224] [--batch 1] [--repeats 3] [--warmup 2] [--tiles 0]
    SOFTIPU_HOST_THREADS=1 python bench/bench_onnx.py --single-thread   # both on one thread, CPU s

Prints one JSON line per figure: ``first_call_s`` (load + check + lower + compile + weights + one
batch) and ``later_call_s`` (median of the repeats) beside onnxruntime's session creation + first
run and its later run, their ratio, the modeled IPU time of a batch and the answers' difference.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
import warnings

import numpy as np
import onnxruntime as ort
import torch

import softipu as sp
import softipu.onnx as so


class Bottleneck(torch.nn.Module):
    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * 4
        self.c1, self.b1 = torch.nn.Conv2d(cin, width, 1, bias=False), torch.nn.BatchNorm2d(width)
        self.c2 = torch.nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.b2 = torch.nn.BatchNorm2d(width)
        self.c3, self.b3 = torch.nn.Conv2d(width, cout, 1, bias=False), torch.nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                            torch.nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.b1(self.c1(x)))
        y = torch.relu(self.b2(self.c2(y)))
        y = self.b3(self.c3(y))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class ResNet50(torch.nn.Module):
    """torchvision's ResNet-50 layout ([3, 4, 6, 3] bottlenecks), written out (no torchvision)."""

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 7, 2, 3, bias=False), torch.nn.BatchNorm2d(64),
                                        torch.nn.ReLU(), torch.nn.MaxPool2d(3, 2, 1))
        layers, cin = [], 64
        for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            for k in range(blocks):
                layers.append(Bottleneck(cin, width, stride if k == 0 else 1))
                cin = width * 4
        self.layers = torch.nn.Sequential(*layers)
        self.fc = torch.nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(self.stem(x))
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(y, 1), 1))


def export_resnet50(image: int, batch: int) -> bytes:
    torch.manual_seed(0)
    net = ResNet50().eval()
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(batch, 3, image, image),), f, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["logits"])
    return f.getvalue()


# Each timed call starts on a quiet host: onnxruntime's intra-op worker keeps spinning on a core for
# ~55 ms after its run returns (measured: /proc/self/task states after a ResNet-50 run on 2 cores),
# which would take a core from whichever call came next. Not part of either figure.
QUIET_S = 0.1


def _timed(fn, clock=time.perf_counter):  # noqa: ANN001, ANN202
    start = clock()
    out = fn()
    return out, clock() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=int, default=224)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed later calls of both first (the fast engine times a compute set's "
                             "first three runs to decide whether to share it over cores)")
    parser.add_argument("--tiles", type=int, default=0, help="0: a whole GC200; else a small ipu_model")
    parser.add_argument("--precision", default="fp32", choices=["fp16", "fp32"],
                        help="fp32 (the model as exported) or fp16 (floats held as half on the IPU)")
    parser.add_argument("--single-thread", action="store_true",
                        help="onnxruntime on one thread and both timed in CPU seconds of this thread "
                             "(run with SOFTIPU_HOST_THREADS=1): a figure a loaded host does not skew")
    args = parser.parse_args()
    if args.single_thread and sp.codelets.host.CORES != 1:
        parser.error("--single-thread needs SOFTIPU_HOST_THREADS=1 in the environment")
    clock = time.thread_time if args.single_thread else time.perf_counter
    data = export_resnet50(args.image, args.batch)
    x = np.random.default_rng(0).standard_normal((args.batch, 3, args.image, args.image)).astype(np.float32)
    target = sp.targets.GC200 if not args.tiles else \
        sp.targets.ipu_model(tiles=args.tiles, bytes_per_tile=1 << 22)

    fits = {"value": True}

    def first_softipu():  # noqa: ANN202
        try:
            sess = so.InferenceSession(data, so.Options(target=target, precision=args.precision))
        except sp.errors.OutOfMemoryError:  # say so, and compile anyway to time it and read the report
            fits["value"] = False
            sess = so.InferenceSession(data, so.Options(target=target, precision=args.precision,
                                                        engine_options={"debug.allowOutOfMemory": True}))
        return sess, sess.run(None, {"x": x})[0]

    def first_ort():  # noqa: ANN202
        opts = ort.SessionOptions()
        if args.single_thread:
            opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        return sess, sess.run(None, {"x": x})[0]

    (sess, got), first_s = _timed(first_softipu)
    (ref_sess, want), first_ort_s = _timed(first_ort)
    for _ in range(args.warmup):  # untimed: the engine settles how it shares work over its first runs
        sess.run(None, {"x": x})
        ref_sess.run(None, {"x": x})
    later, later_ort = [], []
    for _ in range(args.repeats):  # interleaved: a change in the host's load hits both alike
        time.sleep(QUIET_S)
        later.append(_timed(lambda: sess.run(None, {"x": x}), clock)[1])
        time.sleep(QUIET_S)
        later_ort.append(_timed(lambda: ref_sess.run(None, {"x": x}), clock)[1])
    diff = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))
    common = {"model": "resnet50", "image": args.image, "batch": args.batch, "target": target.name,
              "precision": args.precision}
    print(json.dumps({"bench": "onnx_first_call", **common, "first_call_s": round(first_s, 3),
                      "onnxruntime_first_call_s": round(first_ort_s, 3),
                      "compile_s": round(sess.compile_seconds, 3), "fits_in_memory": fits["value"],
                      "target_s": 15.0}))
    clock_name = "thread_cpu_1_thread" if args.single_thread else "wall"
    print(json.dumps({"bench": "onnx_later_call", **common, "clock": clock_name,
                      "later_call_s": round(statistics.median(later), 4),
                      "later_call_spread_s": [round(t, 4) for t in later],
                      "onnxruntime_s": round(statistics.median(later_ort), 4),
                      "onnxruntime_spread_s": [round(t, 4) for t in later_ort],
                      "ratio": round(statistics.median(later) / statistics.median(later_ort), 2),
                      "target_ratio": 2.0}))
    print(json.dumps({"bench": "onnx_answers", **common, "max_diff_vs_onnxruntime_relative_to_max": diff,
                      "modeled_ipu_ms": round(sess.report.seconds * 1e3, 3) if hasattr(sess.report, "seconds")
                      else None, "cycles": sess.cycle_count}))


if __name__ == "__main__":
    main()
