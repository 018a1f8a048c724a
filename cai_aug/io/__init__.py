"""Images and folders: one list of image files, one coercion of images to tensors, one output writer.

The layer below the engine: it knows files, arrays and tensors, never the algorithm.

- :mod:`cai_aug.io.images`: :func:`~cai_aug.io.images.list_images` / ``image_keys`` (the one listing
  of a folder), ``read_image`` (upright, in the file's own mode and depth on request), atomic
  ``write_image`` / ``write_mask`` / ``write_bytes``.
- :mod:`cai_aug.io.coerce`: ``coerce_image`` / ``restore_image`` (one image in any usual form to
  ``(C, H, W)`` float in [0, 1] and back, grey kept grey, alpha carried), ``load_image``, and the engine's
  batch checks ``as_float_batch`` / ``restore_layout``.
- :mod:`cai_aug.io.output`: ``OutputFolder`` (atomic files, manifest, ``skipped.jsonl``, resume, preview).
- :mod:`cai_aug.io.preview`, :mod:`cai_aug.io.demo_data`, :mod:`cai_aug.io.bank_builder`.
"""
