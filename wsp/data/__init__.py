"""LightningDataModules: the hashtag corpus (WebDataset shards) and labelled image folders."""
