# Sphinx configuration: ``sphinx-build doc/source doc/build/html``. The
# pages are plain reStructuredText that docutils also reads (see
# tests/unit/test_docs.py); they need no extension.
project = 'xenapinfs-driver'
master_doc = 'index'
exclude_patterns = []
