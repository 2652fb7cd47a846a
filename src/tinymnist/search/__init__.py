"""The search: its spaces (``space``), the study and its storage (``study``), the workers and their sink
(``workers``), reading exports and the analysis the live search uses (``analysis``). Never imports plotting
or the docs code."""
