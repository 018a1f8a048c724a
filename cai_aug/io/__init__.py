"""Images and folders: one list of image files, one coercion of images to tensors, one output writer.

The layer below the engine: it knows files, arrays and tensors, never the algorithm.
"""
