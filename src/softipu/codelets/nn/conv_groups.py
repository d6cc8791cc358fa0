"""All of a compute set's convolution window vertices run as a few GEMMs (the fast engine's
``group_runner`` hook of :func:`softipu.codelets.nn.conv.conv_window_codelet`, one replica).

A convolution whose vertices read their windows in place (ops/_conv_windows.py) compiles to many
vertex groups: a block of output pixels that wraps an output row moves its input range's start
irregularly, so the vertices fall into short strided runs (ResNet-50's 7x7 stem on a GC200, its
reduction split in two K ranges: 578 groups of one to four vertices). Run group by group, each
call's fixed cost (its params read, its window offsets built, one small GEMM) was 0.35 ms for
0.02 ms of arithmetic: ONNX ResNet-50's later call went 0.21 -> 0.42 s.

Here every ConvWindow vertex of the compute set that reads one padded input is a block of rows
and columns of one product per K range, as poplin's partial-sum vertices are pieces of one
convolution:

* the input's window matrix (im2col, ``pixels x kh*kw*c``) is gathered on the host a chunk of
  whole vertex blocks at a time, through strided views of the input (one per output row or run of
  rows; no address list), each window element converted to fp32 once;
* per K range ``[k0, k0 + kk)`` the distinct weight blocks the chunk's vertices read are laid side
  by side, ``kk x sum(n)``, and the chunk's rows of the range's columns times them is one GEMM;
* each vertex's output block is its rows and columns of the product, written through one strided
  view per run of vertices whose outputs step evenly (rounded once to the output type).

Numerics (design.md principle 6): each output is a dot product of length ``kk`` accumulated in
fp32, as the vertex computes it, but in the merged GEMM's order: within
:func:`softipu.codelets._common.contraction_bound` of the reference interpreter (``|fast - ref|
<= 2 gamma_kk (|A| . |B|)``, plus the output's rounding where it is fp16). The chunks and products
are cut by the executable's sizes alone (never by the host's threads or load) and each chunk is
one job writing its own vertices' outputs, so the bits are the same on every run and any number
of host threads.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np

from softipu.codelets.host import BLAS, scratch
from softipu.codelets.matmul import B_TRANSPOSED

__all__ = ["ConvWindowsRunner", "CHUNK_ELEMENTS"]

# Window-matrix elements (rows x kh*kw*c) a chunk gathers at most, unless one vertex block is
# larger: bounds the host's scratch memory (4 MiB of fp32) and cuts a large convolution into
# jobs the engine may run side by side. A constant: the cut never depends on the host.
CHUNK_ELEMENTS = 1 << 20

_GEOMETRY = ("ho", "wo", "hp", "wp", "c", "kh", "kw", "sh", "sw", "dh", "dw")


class ConvWindowsRunner:
    """The compute set's groups of one ConvWindow codelet, as chunked GEMMs (module doc)."""

    __slots__ = ("group", "where", "chunks")

    def __init__(self, group: Any, where: str, chunks: list[_Chunk]) -> None:
        self.group, self.where, self.chunks = group, where, chunks

    @classmethod
    def build(cls, groups: list, storage: Any, where: str) -> ConvWindowsRunner | None:
        """The runner, or None (run the groups one by one) where a field is not one contiguous
        row a vertex or the vertices' pixel blocks of one input overlap."""
        cols = _vertex_columns(groups)
        if cols is None:
            return None
        fields = groups[0].codelet.fields
        x_buf, w_buf = storage.buffers[fields["x"].dtype][0], storage.buffers[fields["w"].dtype][0]
        out_buf = storage.buffers[fields["out"].dtype][0]
        chunks: list[_Chunk] = []
        inputs = np.stack([cols["origin"]] + [cols[k] for k in _GEOMETRY])
        _, which = np.unique(inputs, axis=1, return_inverse=True)
        for u in range(int(which.max()) + 1):
            sel = np.flatnonzero(which.reshape(-1) == u)
            geo = {k: int(cols[k][sel[0]]) for k in _GEOMETRY}
            made = _input_chunks({k: v[sel] for k, v in cols.items()}, geo, x_buf, w_buf, out_buf)
            if made is None:
                return None
            chunks += made
        return cls(groups[0], where, chunks)

    def jobs(self, storage: Any) -> list:
        """One job per chunk, largest first (each writes its own vertices' outputs)."""
        return [partial(c.run) for c in sorted(self.chunks, key=lambda c: -c.work)]


def _vertex_columns(groups: list) -> dict[str, np.ndarray] | None:
    """Every vertex's params and its fields' first addresses (``origin``: the padded input's
    first element, ``x``'s start less ``x0``), or None where a field's row is not contiguous."""
    parts: dict[str, list[np.ndarray]] = {}
    for g in groups:
        starts = {}
        for name in ("x", "w", "out"):
            t = g.fields[name]
            if isinstance(t, tuple) or not t.is_strided or t.ndim != 2 \
                    or (t.shape[1] > 1 and t.strides[1] != 1):
                return None
            starts[name] = t.offset + np.arange(t.shape[0], dtype=np.int64) * t.strides[0]
        params = {k: np.asarray(g.fields[k]).reshape(-1).astype(np.int64)
                  for k in ("p0", "x0", "k0", "kk", "m", "n", "layout", *_GEOMETRY)}
        if any(p.size != g.num_vertices for p in params.values()):
            return None
        params |= {"origin": starts["x"] - params["x0"], "w_at": starts["w"], "out_at": starts["out"]}
        for k, v in params.items():
            parts.setdefault(k, []).append(v)
    cols = {k: np.concatenate(v) for k, v in parts.items()}
    keep = cols["m"] * cols["n"] > 0  # an empty output block computes nothing
    return {k: v[keep] for k, v in cols.items()} if keep.any() else None


def _input_chunks(v: dict[str, np.ndarray], geo: dict[str, int], x_buf: np.ndarray, w_buf: np.ndarray,
                  out_buf: np.ndarray) -> list[_Chunk] | None:
    """The chunks of one padded input's vertices: runs of adjacent pixel blocks, cut at block
    boundaries after :data:`CHUNK_ELEMENTS` window elements."""
    k_all = geo["kh"] * geo["kw"] * geo["c"]
    blocks = np.unique(np.stack([v["p0"], v["m"]]), axis=1)  # distinct (p0, m), by p0
    p0, m = blocks
    if np.any(p0[1:] < p0[:-1] + m[:-1]) or np.any(v["k0"] < 0) or np.any(v["k0"] + v["kk"] > k_all):
        return None
    chunks, lo = [], 0
    for b in range(1, p0.size + 1):
        end = b == p0.size or p0[b] != p0[b - 1] + m[b - 1]  # a gap between blocks ends a run
        if end or (p0[b] + m[b] - p0[lo]) * k_all > CHUNK_ELEMENTS:
            a, z = int(p0[lo]), int(p0[b - 1] + m[b - 1])
            mine = (v["p0"] >= a) & (v["p0"] < z)
            chunk = _Chunk.build({k: c[mine] for k, c in v.items()}, geo, a, z, x_buf, w_buf, out_buf)
            if chunk is None:
                return None
            chunks.append(chunk)
            lo = b
    return chunks


class _Chunk:
    """Rows ``[a, z)`` of one input's window matrix and the GEMMs of the vertices whose pixel
    blocks they are: per K range, ``windows[:, k0:k0 + kk] . [w_0 w_1 ...]``."""

    __slots__ = ("x_views", "rows", "k_all", "products", "work")

    @classmethod
    def build(cls, v: dict[str, np.ndarray], geo: dict[str, int], a: int, z: int, x_buf: np.ndarray,
              w_buf: np.ndarray, out_buf: np.ndarray) -> _Chunk | None:
        self = cls()
        self.rows, self.k_all = z - a, geo["kh"] * geo["kw"] * geo["c"]
        try:
            self.x_views = _window_views(x_buf, int(v["origin"][0]), geo, a, z)
            self.products = []
            keys = np.stack([v["k0"], v["kk"], v["layout"]])
            _, which = np.unique(keys, axis=1, return_inverse=True)
            for u in range(int(which.max()) + 1):
                sel = np.flatnonzero(which.reshape(-1) == u)
                self.products.append(_Product.build({k: c[sel] for k, c in v.items()}, a, w_buf, out_buf))
        except ValueError:  # a view reaching outside the buffer: run the groups one by one
            return None
        self.work = self.rows * sum(p.kk * p.width for p in self.products)
        return self

    def run(self) -> None:
        windows = scratch((self.rows, self.k_all), "conv-groups:windows")
        at = 0
        for view in self.x_views:  # each window element converted to fp32 once
            count = view.shape[0] * (view.shape[1] if view.ndim == 5 else 1)
            np.copyto(windows[at:at + count].reshape(view.shape), view)
            at += count
        with BLAS.single_threaded():
            for p in self.products:
                p.run(windows)


def _window_views(buf: np.ndarray, origin: int, geo: dict[str, int], a: int, z: int) -> list[np.ndarray]:
    """Strided views of the padded input (NHWC at ``origin``) whose rows, in order, are output
    pixels ``[a, z)``'s windows in ``(kh, kw, c)`` order: a view per partial output row
    ``(pixels, kh, kw, c)`` and per run of whole rows of one sample ``(rows, wo, kh, kw, c)``.
    The ndarray constructor refuses a view outside the buffer (ValueError)."""
    ho, wo, hp, wp, c = (geo[k] for k in ("ho", "wo", "hp", "wp", "c"))
    item = buf.itemsize
    kernel = (geo["kh"], geo["kw"], c)
    kstrides = (geo["dh"] * wp * c * item, geo["dw"] * c * item, item)
    views, p = [], a
    while p < z:
        n, rest = divmod(p, ho * wo)
        oh, ow = divmod(rest, wo)
        start = origin + ((n * hp + oh * geo["sh"]) * wp + ow * geo["sw"]) * c
        if ow or z - p < wo:
            count = min(wo - ow, z - p)
            shape, strides = (count,) + kernel, (geo["sw"] * c * item,) + kstrides
        else:
            count = min(ho - oh, (z - p) // wo) * wo
            shape = (count // wo, wo) + kernel
            strides = (geo["sh"] * wp * c * item, geo["sw"] * c * item) + kstrides
        views.append(np.ndarray(shape, buf.dtype, buf, start * item, strides))
        views[-1].flags.writeable = False
        p += count
    return views


class _Product:
    """One K range's GEMM over a chunk's rows: the distinct weight blocks its vertices read side by
    side (``kk x width``), and the outputs written back a run of evenly stepping vertices at a
    time."""

    __slots__ = ("k0", "kk", "width", "weights", "writes")

    @classmethod
    def build(cls, v: dict[str, np.ndarray], a: int, w_buf: np.ndarray, out_buf: np.ndarray) -> _Product:
        self = cls()
        self.k0, self.kk = int(v["k0"][0]), int(v["kk"][0])
        transposed = bool(int(v["layout"][0]) & B_TRANSPOSED)
        blocks = np.unique(np.stack([v["w_at"], v["n"]]), axis=1)  # distinct (address, n)
        col_of, self.weights, width = {}, [], 0
        item = w_buf.itemsize
        for at, n in blocks.T.tolist():
            shape, strides = ((n, self.kk), (self.kk * item, item)) if transposed else \
                ((self.kk, n), (n * item, item))
            view = np.ndarray(shape, w_buf.dtype, w_buf, at * item, strides)
            view.flags.writeable = False
            self.weights.append((view.T if transposed else view, width))
            col_of[(at, n)] = width
            width += n
        self.width = width
        col = np.array([col_of[(at, n)] for at, n in zip(v["w_at"].tolist(), v["n"].tolist(), strict=True)],
                       np.int64)
        self.writes = _output_runs(v["p0"] - a, v["m"], col, v["n"], v["out_at"], out_buf)
        return self

    def run(self, windows: np.ndarray) -> None:
        weights = scratch((self.kk, self.width), "conv-groups:weights")
        for view, col in self.weights:
            np.copyto(weights[:, col:col + view.shape[1]], view)
        product = scratch((windows.shape[0], self.width), "conv-groups:product")
        np.matmul(windows[:, self.k0:self.k0 + self.kk], weights, out=product)
        for dst, r0, rows, m, col, n in self.writes:
            np.copyto(dst, product[r0:r0 + rows * m, col:col + n].reshape(rows, m, n))


def _output_runs(row: np.ndarray, m: np.ndarray, col: np.ndarray, n: np.ndarray, out_at: np.ndarray,
                 out_buf: np.ndarray) -> list[tuple]:
    """The vertices' output blocks as runs of one column block and block size whose pixel blocks
    follow each other and whose outputs step evenly: ``(view (rows, m, n), first row, rows, m,
    column, n)``, one strided view of the output buffer a run."""
    order = np.lexsort((row, m, n, col))
    item = out_buf.itemsize
    runs: list[tuple] = []
    i = 0
    while i < order.size:
        first = order[i]
        j, step = i + 1, None
        while j < order.size:
            cur, prev = order[j], order[j - 1]
            alike = (col[cur], n[cur], m[cur]) == (col[first], n[first], m[first])
            if not alike or row[cur] != row[prev] + m[prev]:
                break
            s = int(out_at[cur] - out_at[prev])
            if step is not None and s != step:
                break
            step = s
            j += 1
        count, mm, nn = j - i, int(m[first]), int(n[first])
        strides = ((step if step is not None else mm * nn) * item, nn * item, item)
        view = np.ndarray((count, mm, nn), out_buf.dtype, out_buf, int(out_at[first]) * item, strides)
        runs.append((view, int(row[first]), count, mm, int(col[first]), nn))
        i = j
    return runs
