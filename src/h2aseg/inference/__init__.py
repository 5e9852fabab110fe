"""h2aseg.inference"""
