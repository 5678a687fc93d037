"""Attribution for many targets at once, and the attribution graph of one prompt.

`attribute_all` runs the replacement model once on a batch of copies of the prompt, one copy per
target, and backpropagates the sum of the targets (each from its own copy): one backward pass gives
every target's edges. The replacement model's forward pass is an argument, so the notebook can use
its own.
"""

from collections.abc import Callable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from part_utils.attribution.graph import AttributionGraph, Node
from part_utils.attribution.nodes import Dictionary, Edges, Nodes, Target
from part_utils.attribution.transformer import RecordedPrompt, TransformerWeights

ReplacementForward = Callable[[TransformerWeights, RecordedPrompt, Dictionary, Nodes], tuple[Tensor, Tensor]]


def attribute_all(
    forward: ReplacementForward,
    weights: TransformerWeights,
    recorded: RecordedPrompt,
    dictionary: Dictionary,
    nodes: Nodes,
    targets: Sequence[Target],
) -> Edges:
    """The edges into each target, with a leading target axis; `forward` must accept a batch axis after layer."""
    n = len(targets)
    leaves = Nodes(
        nodes.embeddings.detach().expand(n, -1, -1).clone().requires_grad_(True),
        nodes.latents.detach()[:, None].expand(-1, n, -1, -1).clone().requires_grad_(True),
        nodes.errors.detach()[:, None].expand(-1, n, -1, -1).clone().requires_grad_(True),
    )
    logits, latent_pre = forward(weights, recorded, dictionary, leaves)
    copy = torch.arange(n)
    pos = torch.tensor([target.pos for target in targets])
    index = torch.tensor([target.index for target in targets])
    layer = torch.tensor([target.layer for target in targets])
    is_logit = torch.tensor([target.kind == "logit" for target in targets])
    demeaned = logits - logits.mean(dim=-1, keepdim=True)
    values = torch.where(
        is_logit,
        demeaned[copy, pos, index.clamp(max=logits.shape[-1] - 1)],
        latent_pre[layer, copy, pos, index.clamp(max=latent_pre.shape[-1] - 1)],
    )
    gradients = torch.autograd.grad(values.sum(), (leaves.embeddings, leaves.latents, leaves.errors), allow_unused=True)
    grad_embeddings, grad_latents, grad_errors = (
        torch.zeros_like(leaf) if grad is None else grad
        for grad, leaf in zip(gradients, (leaves.embeddings, leaves.latents, leaves.errors))
    )
    return Edges(
        embeddings=(nodes.embeddings * grad_embeddings).sum(-1),
        latents=(nodes.latents[:, None] * grad_latents).transpose(0, 1),
        errors=(nodes.errors[:, None] * grad_errors).sum(-1).transpose(0, 1),
    )


def graph_nodes(recorded: RecordedPrompt, nodes: Nodes, logits: Sequence[tuple[int, int]]) -> list[Node]:
    """Embeddings, then per layer its error nodes and active latents, then the logits: a topological order."""
    n_layers, n_pos = nodes.latents.shape[:2]
    order = [Node("embedding", -1, pos, int(recorded.tokens[pos]), 1.0) for pos in range(n_pos)]
    for layer in range(n_layers):
        order += [Node("error", layer, pos, 0, 1.0) for pos in range(n_pos)]
        for pos, latent in (nodes.latents[layer] != 0).nonzero().tolist():
            order.append(Node("latent", layer, pos, latent, nodes.latents[layer, pos, latent].item()))
    order += [Node("logit", n_layers, pos, token, 1.0) for pos, token in logits]
    return order


def build_graph(
    forward: ReplacementForward,
    weights: TransformerWeights,
    recorded: RecordedPrompt,
    dictionary: Dictionary,
    nodes: Nodes,
    logits: Sequence[tuple[int, int]],
) -> AttributionGraph:
    """Every edge into every active latent and into the chosen logits (position, token) on this prompt."""
    order = graph_nodes(recorded, nodes, logits)
    targets = [
        Target("latent", node.pos, node.index, node.layer)
        if node.kind == "latent"
        else Target("logit", node.pos, node.index)
        for node in order
        if node.kind in ("latent", "logit")
    ]
    edges = attribute_all(forward, weights, recorded, dictionary, nodes, targets)
    adjacency = torch.zeros(len(order), len(order), dtype=nodes.latents.dtype)
    rows = [i for i, node in enumerate(order) if node.kind in ("latent", "logit")]
    for column, node in enumerate(order):
        adjacency[rows, column] = _source_column(edges, node)
    return AttributionGraph(order, adjacency)


def _source_column(edges: Edges, node: Node) -> Float[Tensor, " targets"]:
    if node.kind == "embedding":
        return edges.embeddings[:, node.pos]
    if node.kind == "error":
        return edges.errors[:, node.layer, node.pos]
    if node.kind == "latent":
        return edges.latents[:, node.layer, node.pos, node.index]
    return torch.zeros(edges.embeddings.shape[0], dtype=edges.embeddings.dtype)
