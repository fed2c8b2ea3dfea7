"""Every size threshold that picks how xpcnn runs, in one place.

Each was measured on one machine (2-core AMD EPYC, numpy backend, whole training steps in interleaved A/B
runs); the measurements are in ``benchmarks/RESULTS.md`` ("Thresholds"), not here, because they hold for that
machine only. A threshold changes speed, never results: every route and shard count gives the same numbers
(tested), so moving one is safe.
"""

from __future__ import annotations

# Convolution (xpcnn.functional.conv.choose_route): the "rows" route (one matrix product per kernel row over the
# kw column offsets) when the im2col columns would hold at least this many elements and the rows have stride 1.
ROW_SPLIT_MIN_ELEMENTS = 1 << 21

# Weight gradient: with fewer output channels than this and at most THIN_MAX_PATCH rows of columns (LeNet's first
# layer: 6 channels, 25 rows), one matrix-vector product per channel instead of one thin GEMM.
THIN_MAX_CHANNELS = 8
THIN_MAX_PATCH = 256

# Batch shards (xpcnn.parallel): a shard must hold at least this many elements, counted as its batch times the
# elements an average module of the model outputs per sample.
MIN_SHARD_ELEMENTS = 1 << 17
