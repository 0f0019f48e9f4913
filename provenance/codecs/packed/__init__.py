"""Packed integer/codebook layouts of quantized safetensors checkpoints, one module each.

GPTQ (:mod:`.gptq`), AWQ GEMM (:mod:`.awq`), compressed-tensors (:mod:`.compressed`),
bitsandbytes NF4/FP4/LLM.int8 (:mod:`.bnb`) and MLX affine (:mod:`.mlx`). Each turns the
stored parts of one logical tensor (already validated and read by the safetensors reader,
a chunk of canonical rows at a time) into a :class:`.grid.PackedRows`: the integer codes
and the per-element grid (affine scale/zero/bias, or a codebook times a block scale).
From it come the float32 values, rounded exactly as the ecosystem's own dequantizer
rounds them (its arithmetic dtype), and the cell of the grid each code stands for, which
the grid-consistency test uses. Shared bit unpacking is in :mod:`.bits`.

Pure functions of torch tensors (any device); nothing here opens a file.
"""
