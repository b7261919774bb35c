"""Evaluation: what a model knows of a set, from its greedy generations and its losses."""
