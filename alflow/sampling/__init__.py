"""Sampling: where new candidate geometries come from and which of them get labelled.

Submodules are imported explicitly (`alflow.sampling.carving`, `alflow.sampling.selection`,
...) so that importing this package stays cheap and free of torch.
"""
