"""Pricing training at Pod scale: distinct layers priced once, composed over a system's IPUs."""

from softipu.frontends.torch.scale.layers import LayerCost, fake_build, price_layer

__all__ = ["LayerCost", "fake_build", "price_layer"]
