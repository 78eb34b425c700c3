"""Training on top of the store: data sets, models, and (coming) fit()."""
