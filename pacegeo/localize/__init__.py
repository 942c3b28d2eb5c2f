"""Localize-then-map: a reconstructed, retrievable map of a sequence, and query images placed in it.

::

    from pacegeo import Pipeline

    pipe = Pipeline.from_pretrained("pacegeo-tiny")
    store = pipe.build_map("frames/", keep=0.5, chunk=32)     # MapStore
    store.save("room.pgmap")
    for loc in pipe.localize(["query1.png", "query2.png"], store="room.pgmap", top_k=4):
        print(loc.name, loc.position, loc.retrieved, loc.confidence)

**Mapping** (:func:`build_map`) reconstructs the map sequence with :meth:`Pipeline.reconstruct`,
in one pass or, with ``chunk``, in chunks of ``chunk`` frames that share ``overlap`` frames with
the previous chunk. Each chunk after the first is brought into the first chunk's frame by the
similarity fitted (:func:`fit_sim3`) between its camera centres of the overlapping frames and the
already placed ones. Every map frame gets a global descriptor from the VPR extractor
(:mod:`pacegeo.vpr`). A :class:`MapStore` keeps the descriptors, the camera-to-world poses, the
intrinsics and the map images at the model input resolution (uint8), so that map frames can be
reconstructed again together with a query.

**Localization** (:func:`localize`), per query image:

1. retrieve the ``top_k`` map frames with the most similar descriptors (exact inner-product search,
   :class:`pacegeo.vpr.DescriptorIndex`);
2. reconstruct ``[retrieved map frames (best first)..., query]`` together (pruned with ``keep``), so
   the best match is the reference frame;
3. fit the similarity taking the predicted camera centres of the retrieved map frames onto their
   stored map poses (:func:`fit_sim3`: Umeyama when there are at least 3 non-collinear centres,
   otherwise the mean rotation offset of the frames, scale from centre spreads, translation from
   the centroids);
4. express the predicted query camera in the map frame with that similarity.

The retrieval-only pose (the stored pose of the top-1 map frame) is returned alongside.

Conventions: poses are OpenCV camera-to-world ``[4, 4]`` (x right, y down, z forward) in the map
frame, which is the first map frame's camera frame at the model's (arbitrary) scale; intrinsics
are ``[3, 3]`` at the model input resolution with pixel centres at integer coordinates.

Modules: :mod:`~pacegeo.localize.store` (the map and its file), :mod:`~pacegeo.localize.build`,
:mod:`~pacegeo.localize.query`, :mod:`~pacegeo.localize.align` (Sim(3) fits) and
:mod:`~pacegeo.localize.extractors` (descriptor heads).
"""

from pacegeo.localize.align import Sim3Fit, fit_sim3, localization_confidence
from pacegeo.localize.build import DEFAULT_MAP_KEEP, build_map, chunk_spans
from pacegeo.localize.extractors import vpr_extractor
from pacegeo.localize.query import DEFAULT_TOP_K, Localization, localize
from pacegeo.localize.store import MAP_FORMAT, MAP_SUFFIX, MapStore, load_map

__all__ = [
    "DEFAULT_MAP_KEEP",
    "DEFAULT_TOP_K",
    "MAP_FORMAT",
    "MAP_SUFFIX",
    "Localization",
    "MapStore",
    "Sim3Fit",
    "build_map",
    "chunk_spans",
    "fit_sim3",
    "load_map",
    "localization_confidence",
    "localize",
    "vpr_extractor",
]
