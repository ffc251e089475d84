"""The privacy report: a run directory rendered as JSON, Markdown, HTML, plots and (optionally) PDF.

``build`` assembles a run's report and writes its files; ``sites`` gathers each site's part and
``ledgers`` checks the sites' ledgers against it; ``document`` lays the report out as sections
(``glance``: the plain first screen; ``details``: the statistics and a glossary) in the model of
``blocks``; ``render`` turns them into one self-contained HTML page, ``plots`` draws the PNGs and
``pdf`` prints the page with a headless Chromium; ``names`` holds the file names and fixed
wording they share, below all of them.
"""
