"""h2aseg: H2ASeg PET/CT tumour segmentation toolkit."""

__version__ = "0.1.0"
