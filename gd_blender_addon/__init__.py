"""Blender add-on for generative-densification splats.

The add-on's operators, panels and preferences are built on top of `engine`;
this package is the home of the Blender side (see DESIGN.md §3).
"""
