"""Fused Triton kernels: attention with 2-D RoPE inside (attention.py) and SIGReg's Epps-Pulley statistics
(sigreg.py). Each file holds its PyTorch reference, the kernels, an autograd Function and a bench()."""
