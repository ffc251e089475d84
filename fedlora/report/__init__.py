"""The privacy report: a run directory rendered as JSON, Markdown, HTML and plots.

``build`` assembles a run's report and writes its files; ``sites`` gathers each site's part and
``ledgers`` checks the sites' ledgers against it; ``document`` lays the report out as sections;
``render`` turns those sections into HTML and draws the plots; ``names`` holds the file names
and fixed wording they share, below all of them.
"""
