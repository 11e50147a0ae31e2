"""The data: ImageNet's record format, its sources, the input pipeline and augmentation, statistics,
preparation and the offline demo's data set."""
