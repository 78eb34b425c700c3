"""Training on top of the store: fit() (fastps.train.fit) and its rooms (variants, options,
learner, coordinator, run, history, backends), data sets and models (docs/train.md). Nothing
is imported here, so the CLI and the simulator read the variant table without loading torch."""
