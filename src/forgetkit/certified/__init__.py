"""Unlearning with guarantees: certified removal for a convex head on frozen features."""
