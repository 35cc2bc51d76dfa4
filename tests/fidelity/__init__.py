"""Issue 16's exactness suite: the engine against AutoTimm's own numbers on real checkpoints."""
