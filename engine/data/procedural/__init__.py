"""Procedural props for the data generator.

Pure modules (no bpy, importable anywhere): `assets` (bundled HDRIs, fonts, photos),
`geometry` (numpy meshes with UVs), `textures` (labels and photo prints), `spec` (seeded
sampling of a whole prop as JSON). Blender modules (import bpy; only the generator
process loads them): `shapes`, `materials`, `lighting`, `scene`.
"""
