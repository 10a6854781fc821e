"""LoRA layers computed as one autograd function: the frozen weight's product and the adapter's in one pass.

peft's ``lora.Linear`` runs the base layer, then ``lora_B(lora_A(dropout(x))) * scaling`` as separate modules and
operations, each a node of the autograd graph, and adds the two. ``LoraLinear`` computes the same
``x W^T + b + s (d(x) A^T) B^T`` (d: the adapter's dropout) with the adapter's product added into the base
product's output (``addmm``), and its backward the same three gradients by hand (dx, dA, dB; none for the frozen
W and b), saving the same tensors peft's graph saves (the adapter's input, its dropout mask where there is one
and the input needs a gradient, and d(x) A^T). The mask is drawn as torch's dropout draws it, so a seeded run
draws the same masks. bench/lora_speed.py measures the time it saves on a training step; tests/test_fused_lora.py
that the losses and gradients equal peft's.

Unsloth fuses LoRA the same way with Triton kernels, for NVIDIA GPUs only; peft has no fused path and Liger fuses
other layers: nothing maintained does this for the CPU, so tuiwiz does it in torch.

Only the plain case is taken, layer by layer, and checked again at every call: a ``torch.nn.Linear`` base (not a
quantized one), one active adapter, plain dropout or none, no DoRA, no bias on the adapter, not merged, adapters
enabled (DPO's reference pass disables them), no autocast, one dtype. Anything else runs peft's own forward. It
is never used where DeepSpeed ZeRO-3 shards the weights: the base layer's hooks that gather them would not run.
"""

from __future__ import annotations

import types

import torch


class LoraLinear(torch.autograd.Function):
    """y = x W^T + b + s (d(x) A^T) B^T for a frozen W, b, where d is the adapter's dropout (the identity when
    ``dropout`` is 0); gradients for x, A and B."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling: float, dropout: float):
        flat = x.reshape(-1, x.shape[-1])
        out = torch.addmm(bias, flat, weight.t()) if bias is not None else flat @ weight.t()
        if dropout:  # as torch's dropout draws it: a Bernoulli(1 - p) mask scaled by 1 / (1 - p)
            noise = torch.empty_like(flat).bernoulli_(1 - dropout).div_(1 - dropout)
            dropped = flat * noise
        else:
            noise, dropped = None, flat
        down = dropped @ lora_a.t()  # (tokens, r)
        out.addmm_(down, lora_b.t(), alpha=scaling)
        ctx.save_for_backward(dropped, noise if ctx.needs_input_grad[0] else None, weight, lora_a, lora_b, down)
        ctx.scaling = scaling
        ctx.shape = x.shape
        return out.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad):
        dropped, noise, weight, lora_a, lora_b, down = ctx.saved_tensors
        s = ctx.scaling
        grad = grad.reshape(-1, grad.shape[-1])
        grad_x = grad_a = grad_b = None
        through_b = grad @ lora_b  # (tokens, r)
        if ctx.needs_input_grad[0]:
            through_a = through_b @ lora_a
            if noise is not None:
                through_a.mul_(noise)
            grad_x = (grad @ weight).add_(through_a, alpha=s).view(ctx.shape)
        if ctx.needs_input_grad[3]:
            grad_a = (through_b.t() @ dropped).mul_(s)
        if ctx.needs_input_grad[4]:
            grad_b = (grad.t() @ down).mul_(s)
        return grad_x, None, None, grad_a, grad_b, None, None


def _plain(layer, name: str) -> bool:
    """Whether ``layer``'s adapter ``name`` is the case LoraLinear computes (what does not change per call)."""
    base = layer.base_layer
    return (type(base) is torch.nn.Linear and not getattr(layer, "fan_in_fan_out", False)
            and not layer.use_dora.get(name, False)
            and type(layer.lora_dropout[name]) in (torch.nn.Identity, torch.nn.Dropout)
            and type(layer.lora_A[name]) is torch.nn.Linear and type(layer.lora_B[name]) is torch.nn.Linear
            and layer.lora_A[name].bias is None and layer.lora_B[name].bias is None
            and not base.weight.requires_grad and (base.bias is None or not base.bias.requires_grad)
            and not getattr(layer, "lora_variant", {}).get(name))


def fuse(model) -> tuple[int, int]:
    """Give every plain LoRA layer of ``model`` the fused forward. Returns (fused, LoRA layers)."""
    try:
        from peft.tuners.lora import Linear
    except ImportError:
        return 0, 0
    fused = total = 0
    for module in model.modules():
        if not isinstance(module, Linear):
            continue
        total += 1
        names = list(module.active_adapters)
        if len(names) == 1 and names[0] in module.lora_A and _plain(module, names[0]):
            module.forward = types.MethodType(_fused_forward, module)
            fused += 1
    return fused, total


def _fused_forward(self, x, *args, **kwargs):
    names = self.active_adapters
    if (args or kwargs or self.disable_adapters or self.merged or len(names) != 1
            or torch.is_autocast_enabled(x.device.type)):
        return type(self).forward(self, x, *args, **kwargs)
    name = names[0]
    base, lora_a, lora_b = self.base_layer, self.lora_A[name].weight, self.lora_B[name].weight
    if not (x.dtype == base.weight.dtype == lora_a.dtype == lora_b.dtype):
        return type(self).forward(self, x, *args, **kwargs)
    dropout = self.lora_dropout[name]
    p = float(dropout.p) if isinstance(dropout, torch.nn.Dropout) and dropout.training else 0.0
    return LoraLinear.apply(x, base.weight, base.bias, lora_a, lora_b, float(self.scaling[name]), p)
