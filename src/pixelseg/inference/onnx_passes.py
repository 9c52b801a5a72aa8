"""Rewrites of an exported ONNX graph that make it faster and compute the same.

:func:`fold_pads` moves constant zero padding into the convolution that follows it.
EfficientNet-Lite's TensorFlow weights need TensorFlow's "same" padding on strided
convolutions, with the odd pixel at the bottom and right. PyTorch's ``Conv2d`` pads both
sides alike, so the model pads first (``F.pad``) and the exporter writes a ``Pad`` node
before each such ``Conv``. ONNX's ``Conv`` takes uneven ``pads`` itself, but ONNX Runtime
does not fuse the two. On its fast CPU path, which computes convolutions in blocks of
channels (NCHWc), every ``Pad`` costs a layout change out and back in. Folded,
``lite-unet-fast`` at 256x256 ran in 7.9 instead of 10.2 ms on the 2-core CPU
(docs/benchmarks.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def fold_pads(model: Any) -> int:
    """Fold each ``Pad`` of zeros over H and W, whose pads are constants and whose only
    readers are ``Conv`` nodes with explicit pads, into those convolutions, in place.
    Returns how many were folded. ``model`` is an ``onnx.ModelProto``."""
    from onnx import numpy_helper

    graph = model.graph
    constants = _Constants(graph, numpy_helper)
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    graph_outputs = {output.name for output in graph.output}
    folded = []
    for pad in graph.node:
        pads = _zero_pads_over_hw(pad, constants)
        users = readers.get(pad.output[0], []) if pads is not None else []
        if not users or pad.output[0] in graph_outputs:
            continue
        if not all(user.op_type == "Conv" and _explicit_pads(user) for user in users):
            continue
        top, left, bottom, right = pads
        for conv in users:
            attribute = _pads_attribute(conv)
            old = list(attribute.ints) if attribute is not None else [0, 0, 0, 0]
            new = [old[0] + top, old[1] + left, old[2] + bottom, old[3] + right]
            if attribute is None:
                from onnx import helper

                conv.attribute.append(helper.make_attribute("pads", new))
            else:
                attribute.ClearField("ints")
                attribute.ints.extend(new)
            conv.input[0] = pad.input[0]
        folded.append(pad)
    for pad in folded:
        graph.node.remove(pad)
    return len(folded)


class _Constants:
    """The values of a graph's tensors that do not depend on its input. The exporter writes
    ``F.pad``'s amounts as a chain of small operations on constants (reshape, slice, transpose,
    cast) that it cannot fold itself; those are evaluated here, one node at a time, by
    onnx's reference implementation."""

    FOLDABLE = {"Cast", "Concat", "ConstantOfShape", "Gather", "Identity", "Reshape", "Slice",
                "Squeeze", "Transpose", "Unsqueeze"}  # fmt: skip

    def __init__(self, graph: Any, numpy_helper: Any) -> None:
        self.values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        self.producers = {out: node for node in graph.node for out in node.output}
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)

    def get(self, name: str, depth: int = 0) -> np.ndarray | None:
        if name in self.values:
            return self.values[name]
        node = self.producers.get(name)
        if node is None or node.op_type not in self.FOLDABLE or depth > 16:
            return None
        inputs = [self.get(i, depth + 1) if i else None for i in node.input]
        if any(value is None for i, value in zip(node.input, inputs, strict=True) if i):
            return None
        from onnx import helper
        from onnx.reference import ReferenceEvaluator

        feeds = {f"in{k}": v for k, v in enumerate(inputs) if v is not None}
        single = helper.make_node(
            node.op_type, [f"in{k}" if v is not None else "" for k, v in enumerate(inputs)],
            ["out"], **{a.name: helper.get_attribute_value(a) for a in node.attribute},
        )  # fmt: skip
        (value,) = ReferenceEvaluator(single).run(None, feeds)
        self.values[name] = value
        return value


def _zero_pads_over_hw(node: Any, constants: _Constants) -> list[int] | None:
    """(top, left, bottom, right) of a 4-D constant-mode ``Pad`` of zeros that pads only H
    and W, else None."""
    if node.op_type != "Pad" or len(node.input) < 2:
        return None
    mode = next((a.s for a in node.attribute if a.name == "mode"), b"constant")
    if mode != b"constant":
        return None
    pads = constants.get(node.input[1])
    if pads is None or pads.shape != (8,) or (pads < 0).any():
        return None
    if len(node.input) > 2 and node.input[2]:  # a fill value: folding needs zeros
        value = constants.get(node.input[2])
        if value is None or np.any(value != 0):
            return None
    n0, c0, h0, w0, n1, c1, h1, w1 = (int(p) for p in pads)
    if n0 or c0 or n1 or c1:
        return None
    return [h0, w0, h1, w1]


def _explicit_pads(conv: Any) -> bool:
    auto_pad = next((a.s for a in conv.attribute if a.name == "auto_pad"), b"NOTSET")
    return auto_pad == b"NOTSET"


def _pads_attribute(conv: Any) -> Any:
    return next((a for a in conv.attribute if a.name == "pads"), None)
