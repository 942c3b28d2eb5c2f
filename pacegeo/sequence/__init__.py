"""Long sequences: reconstruct in overlapping chunks and stitch them into one reconstruction.

* :func:`chunk_spans`: the frame ranges of a chunked run (shared with ``pacegeo map``);
* :func:`fit_points_sim3`: a robust, confidence-weighted Sim(3) between the point maps two chunks
  predict for their shared frames;
* :func:`reconstruct_in_chunks`: each chunk reconstructed with the pipeline's model, pruner and
  keep, aligned to the frames already placed, merged into one :class:`pacegeo.Reconstruction`.
"""

from pacegeo.sequence.align import PointFit, fit_points_sim3
from pacegeo.sequence.chunked import reconstruct_in_chunks
from pacegeo.sequence.spans import check_chunking, chunk_spans
from pacegeo.sequence.store import ChunkStore, process_device, process_layout

__all__ = ["ChunkStore", "PointFit", "check_chunking", "chunk_spans", "fit_points_sim3", "process_device",
           "process_layout", "reconstruct_in_chunks"]
