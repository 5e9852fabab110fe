"""Follow-up comparison of two studies of one patient (``h2aseg compare``, ``docs/followup.md``).

:mod:`~h2aseg.followup.studies` reads and checks the studies, :mod:`~h2aseg.followup.registration` aligns
the CTs rigidly, :mod:`~h2aseg.followup.matching` pairs the lesions, :mod:`~h2aseg.followup.percist` holds
the liver reference and the response rules, :mod:`~h2aseg.followup.comparison` the measurements and data
files, :mod:`~h2aseg.followup.report` the page.
"""
