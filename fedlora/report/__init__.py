"""The privacy report: a run directory rendered as JSON, Markdown, HTML and plots.

``build`` gathers a run's figures and writes the report; ``document`` lays it out as sections;
``render`` turns those sections into HTML and draws the plots.
"""
