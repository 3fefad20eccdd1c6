"""Whole jobs chained from the rooms below: the quickstart and the experiments that compare variants on its backbones."""
