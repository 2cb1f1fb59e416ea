"""Training data: the procedural props generator (Blender) and loaders for posed views.

Importing this package never imports bpy: only `engine.data.generator` (run inside the
`engine.data.worker` processes that `gd data make` starts) loads Blender. See README.md
in this folder for the dataset layout.
"""
