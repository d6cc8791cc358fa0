"""A later call's outputs are handed back from that call's own host buffers without a further
copy where already in C order (frontends/torch/runtime.py ``unpack_output``): each call's tensors
stay as they were after the next call, a 0-d output stays 0-d. Oracle: eager PyTorch."""

from __future__ import annotations

import torch

import softipu as sp
import softipu.torch as st


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> dict:
        y = torch.tanh(self.lin(x))
        return {"y": y, "total": y.sum(), "t": y.t()}


def test_each_calls_outputs_are_its_own_and_keep_their_shapes():
    torch.manual_seed(0)
    net = _Net().eval()
    model = st.inference_model(net, st.Options(target=sp.targets.ipu_model(tiles=4)))
    x1, x2 = torch.randn(4, 16), torch.randn(4, 16)
    first = model(x1)
    second = model(x2)
    with torch.no_grad():
        want1, want2 = net(x1), net(x2)
    for got, want in ((first, want1), (second, want2)):  # the first call's values after the second
        for k in want:
            assert got[k].shape == want[k].shape
            torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-5)
    assert first["total"].dim() == 0
    for k in first:
        assert first[k].data_ptr() != second[k].data_ptr()
        assert first[k].is_contiguous()
