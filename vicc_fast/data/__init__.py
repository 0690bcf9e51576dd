"""Input pipelines: WebDataset shards -> augmented, aligned RGB/flow views on the training device."""
