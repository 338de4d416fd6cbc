"""Sphinx configuration of the results site (docs/build_site.py assembles its sources and runs Sphinx)."""

project = "promptmem"
html_title = "promptmem · results"
extensions = ["myst_nb"]
nb_execution_mode = "off"  # the committed outputs are the record of the runs: shown as they are, never re-executed
html_theme = "furo"
html_extra_path = ["extra"]  # figures/ (PNG, PDF, CSV), linked from the landing page
html_copy_source = False
html_show_sourcelink = False
exclude_patterns = ["extra", "static"]
html_favicon = "favicon.svg"  # a page without one makes the browser ask for /favicon.ico, which is not there
html_static_path = ["static"]
html_css_files = ["site.css"]
