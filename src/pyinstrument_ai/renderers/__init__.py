"""Renderers: each turns an :class:`~pyinstrument_ai.analysis.Analysis` into one output format.

A renderer formats; it never computes a metric (those live in :mod:`pyinstrument_ai.analysis`).
"""
