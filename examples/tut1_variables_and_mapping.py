"""Tutorial 1: variables, constants and tile mapping.

An IPU has no shared main memory: it is 1,472 tiles (4 on the small model used here), each a core
with its own SRAM. So every element of every variable must be *mapped* to exactly one tile, and
the compiler refuses a graph with unmapped elements. Where data lives decides which tile can
compute on it without moving it.

A ``Copy`` between tensors mapped to different tiles is an *exchange*: in a BSP superstep the
tiles sync, then send and receive the elements that change tile. Tensors are views (slices,
transposes, reshapes) over variables, so copying through a view costs no host work, only the
exchange the elements need.

This script maps variables by hand and with ``sp.ops.map_linearly``, reads mappings back with
``g.get_tile_mapping``, adds a constant, copies through a transposed view, and reads results on
the host, and shows the compiler's error for a variable with unmapped elements.
"""

from __future__ import annotations

import numpy as np

import softipu as sp
from softipu import program as P


def add_variables(g: sp.Graph) -> tuple[sp.Tensor, ...]:
    v1 = g.add_variable(sp.float32, (4, 4), name="v1")
    for row in range(4):  # by hand: row i lives on tile i
        g.set_tile_mapping(v1[row], row)

    v2 = g.add_variable(sp.float32, (4, 4), name="v2")
    sp.ops.map_linearly(g, v2)  # equal contiguous chunks: 4 elements per tile

    # 5 grains of 2 elements over 4 tiles: the last tile takes the extra grain.
    v3 = g.add_variable(sp.float32, (10,), name="v3")
    sp.ops.map_linearly(g, v3, grain_size=2)

    # v4 lives entirely on tile 3, so copying into it gathers from every tile.
    v4 = g.add_variable(sp.float32, (10,), name="v4")
    g.set_tile_mapping(v4, 3)

    # A constant is a variable the engine fills when it loads; it needs a tile too.
    c = g.add_constant(sp.float32, (4, 4), np.arange(16).reshape(4, 4), name="c")
    g.set_tile_mapping(c, 0)
    return v1, v2, v3, v4, c


def unmapped_error() -> str:
    """The compiler's message for a variable that was never mapped to a tile."""
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    lost = g.add_variable(sp.float32, (8,), name="lost")
    g.set_tile_mapping(lost[:6], 0)  # elements 6 and 7 have no home
    try:
        sp.Engine(g, [P.WriteUndef(lost)])
    except sp.CompileError as exc:
        return str(exc)
    raise AssertionError("an unmapped variable compiled")


def main() -> dict[str, object]:
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    v1, v2, v3, v4, c = add_variables(g)
    prog = P.Sequence(
        P.Copy(c, v1),  # tile 0 sends rows 1..3 of c to tiles 1..3
        P.Copy(v1.transpose(), v2),  # through a transposed view: v2 = c.T
        P.Copy(v3.reverse(), v4),
        P.PrintTensor(v2, "v2 on the device"),
    )
    eng = sp.Engine(g, [prog])  # compiles: fails here if any element is unmapped
    eng.write_tensor(v3, np.linspace(0.0, 0.9, 10))  # the host writes straight into tile memory
    eng.run(0)
    return {
        "v1_mapping": g.get_tile_mapping(v1),  # per tile: [begin, end) of flattened elements
        "v2_mapping": g.get_tile_mapping(v2),
        "v3_tiles": g.tile_of(v3).tolist(),  # the tile of each element
        "v1": eng.read_tensor(v1),
        "v2": eng.read_tensor(v2),
        "v4": eng.read_tensor(v4),
        "unmapped_error": unmapped_error(),
    }


if __name__ == "__main__":
    for key, value in main().items():
        print(f"{key}:\n{value}")
