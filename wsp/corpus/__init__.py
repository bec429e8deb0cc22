"""From posts to training shards: readers, the two-pass builder, sampling weights, synthetic posts."""
