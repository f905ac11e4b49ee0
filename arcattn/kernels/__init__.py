"""Triton kernels behind the `triton` backend: `flash` (the flash-attention kernel and its launcher) and
`configs` (tile sizes and launch options per device family). Importing this package imports Triton."""
