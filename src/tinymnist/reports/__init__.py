"""Reports: terminal tables and sentences (``render``), results.md and the README's table (``results_doc``),
figures and report.md (``report``), what a hand-in adds (``handin``), search.md (``search_doc``). They read
records and exports; they train and evaluate nothing."""
