"""All of a compute set's pooling bands run as a few calls (the fast engine's ``group_runner``
hook of :func:`softipu.codelets.nn.pooling.group_pool_codelet`, one replica).

popnn pools a channels-innermost input a band of output rows at a time, a vertex per output
column block; ResNet-50's stem max-pool on a GC200 compiles to 112 groups of one or 55 vertices,
and a call per group (its params checked, its frame built, nine folds) cost 18 ms a later call for
1.6 ms of data. Groups whose bands have the same geometry (everything but the first input row,
and the same top padding) and the same field lengths compute alike, vertex by vertex: they run as
one :func:`~softipu.codelets.nn.pooling._pool_pixels` call over all their vertices, the inputs
gathered by one ``take`` of their addresses (found once, when the engine loads) and the outputs
written by one assignment. Each output is computed from the same elements in the same order as
its own group computes it, so the values are the same bits.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["PoolGroupsRunner"]


class PoolGroupsRunner:
    """The compute set's groups of one pooling codelet, as batches of alike bands (module doc)."""

    __slots__ = ("group", "where", "batches")

    def __init__(self, group: Any, where: str, batches: list[tuple]) -> None:
        self.group, self.where, self.batches = group, where, batches

    @classmethod
    def build(cls, groups: list, storage: Any, where: str, mode: Any) -> PoolGroupsRunner | None:
        """The runner, or None (run the groups one by one) where a group's params differ from
        vertex to vertex (the codelet's own error then names it) or a field is a vector list."""
        from softipu.codelets.nn.pooling import _GROUP_GEOMETRY

        alike: dict[tuple, list] = {}
        for g in groups:
            params = {k: np.asarray(g.fields[k]).reshape(-1) for k in _GROUP_GEOMETRY}
            if any(p.size == 0 or (p != p[0]).any() for p in params.values()):
                return None
            geo = {k: int(p[0]) for k, p in params.items()}
            x, out = g.fields["x"], g.fields["out"]
            if isinstance(x, tuple) or isinstance(out, tuple):
                return None
            top = max(0, geo["row0"]) - geo["row0"]
            key = (tuple(v for k, v in geo.items() if k != "row0"), top, x.shape[1], out.shape[1])
            alike.setdefault(key, []).append((g, geo))
        buf = storage.buffers[groups[0].codelet.fields["out"].dtype][0]
        batches = []
        for members in alike.values():
            x_at = np.concatenate([g.fields["x"].addresses() for g, _ in members]).astype(np.intp)
            out_at = np.concatenate([g.fields["out"].addresses() for g, _ in members]).astype(np.intp)
            geo = members[0][1]
            oh = out_at.shape[1] // max(geo["OW"] * geo["C"], 1)
            batches.append((buf, x_at, out_at, geo, oh, mode))
        return cls(groups[0], where, batches)

    def jobs(self, storage: Any) -> list:
        """One job per batch (each writes its own outputs: the same bits however they run)."""
        return [lambda b=b: _run_batch(*b) for b in self.batches]


def _run_batch(buf: np.ndarray, x_at: np.ndarray, out_at: np.ndarray, geo: dict, oh: int, mode: Any) -> None:
    from softipu.codelets.nn.pooling import _pool_pixels

    x = np.take(buf, x_at)
    buf[out_at] = _pool_pixels(x, geo, oh, mode).reshape(out_at.shape)
