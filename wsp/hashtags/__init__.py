"""Hashtag engineering: parsing captions, WordNet access and canonical vocabularies."""
