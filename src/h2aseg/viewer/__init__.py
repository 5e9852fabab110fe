"""``h2aseg view``: a local, offline web viewer for a folder of predictions (``docs/viewer.md``).

:mod:`~h2aseg.viewer.catalog` finds the studies, their files and lesion tables; :mod:`~h2aseg.viewer.server`
serves them on 127.0.0.1 with the page in ``static/`` (the vendored NiiVue bundle, its licence, the page's
own script and style).
"""
