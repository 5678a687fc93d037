"""Part 9's machinery: the transformer in plain torch, replacement-model nodes, attribution graphs, truth scores."""
