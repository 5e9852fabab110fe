"""h2aseg.training"""
