"""Memory-saving gradients for chains of invertible layers.

Plain autograd keeps the inputs of every layer of a chain (and the hidden activations of every
coupling network) until the backward pass, so the memory of a gradient grows with the depth K.
An invertible chain does not need them: :class:`InvertibleChainFunction` runs the chain without
recording a graph and keeps only its *output*; the backward pass walks the layers in reverse,
recovers each layer's input from its output by inversion, re-runs that one layer with grad enabled
and backpropagates through it (log-det map included), so at most one layer's graph is alive at a
time. The cost is about one extra forward pass; the memory no longer depends on K.

Layers may define ``reconstruct(y) -> (x, y', ladj)`` (x a leaf, or a tuple of leaves that
concatenate on the channel axis to the input) to do the inversion and the re-run in one
go (the couplings do: their conditioning half is unchanged, so the coupling network runs once
instead of twice); the default is ``x = inverse(y)`` followed by ``forward(x)``.
"""

from __future__ import annotations

import torch


def _reconstruct(layer, y: torch.Tensor):
    """(x, y_again, ladj): x a fresh leaf requiring grad (or a tuple of leaves concatenated on the
    channel axis), y_again and ladj recorded from x."""
    custom = getattr(layer, "reconstruct", None)
    if custom is not None:
        return custom(y)
    with torch.no_grad():
        x = layer.inverse(y)
    x = x.detach().requires_grad_(True)
    y_again, ladj = layer(x)
    return x, y_again, ladj


class InvertibleChainFunction(torch.autograd.Function):
    """``y, ladj = InvertibleChainFunction.apply(chain, x, *params)``: ``chain(x)`` whose backward
    pass recomputes the activations by inversion instead of storing them.

    ``params`` must be the chain's parameters that require grad (the ones the caller wants
    gradients for); frozen parameters are simply left out.
    """

    @staticmethod
    def forward(ctx, chain, x, *params):
        with torch.no_grad():
            y, ladj = chain.plain_forward(x)
        ctx.chain = chain
        ctx.n_params = len(params)
        ctx.save_for_backward(y)
        return y, ladj

    @staticmethod
    def backward(ctx, grad_y, grad_ladj):
        (y,) = ctx.saved_tensors
        chain = ctx.chain
        params = [p for p in chain.parameters() if p.requires_grad]
        index = {id(p): i for i, p in enumerate(params)}
        grads: list[torch.Tensor | None] = [None] * len(params)
        if grad_y is None:
            grad_y = torch.zeros_like(y)
        y = y.detach()
        with torch.enable_grad():
            for layer in reversed(chain.layers):
                x, y_again, ladj = _reconstruct(layer, y)
                layer_params = [p for p in layer.parameters() if p.requires_grad]
                outputs, out_grads = [y_again], [grad_y]
                if grad_ladj is not None and ladj.requires_grad:
                    outputs.append(ladj)
                    out_grads.append(grad_ladj.expand_as(ladj))
                inputs = list(x) if isinstance(x, tuple) else [x]
                got = torch.autograd.grad(outputs, [*inputs, *layer_params], out_grads, allow_unused=True)
                parts = [torch.zeros_like(v) if g is None else g for v, g in zip(inputs, got)]
                grad_y = parts[0] if len(parts) == 1 else torch.cat(parts, 1)
                for p, g in zip(layer_params, got[len(inputs):]):
                    if g is None:
                        continue
                    i = index[id(p)]
                    grads[i] = g if grads[i] is None else grads[i] + g
                y = (inputs[0] if len(inputs) == 1 else torch.cat(inputs, 1)).detach()
                del x, y_again, ladj, got
        if len(params) != ctx.n_params:  # pragma: no cover - requires_grad changed mid-pass
            raise RuntimeError("the chain's trainable parameters changed between forward and backward")
        return (None, grad_y, *grads)


def memory_saving_chain(chain, x: torch.Tensor):
    """``chain(x)`` through :class:`InvertibleChainFunction` (only the chain's output is stored)."""
    params = [p for p in chain.parameters() if p.requires_grad]
    return InvertibleChainFunction.apply(chain, x, *params)
