"""Figures: segmentation overlays and PET MIPs (Fig. 3 style), training curves."""
