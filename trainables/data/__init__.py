"""Data readers: classification sets in ImageNet's layout, and medical segmentation sets."""
