"""Training: the recipe and the run spec (``recipes``), the LR as a pure function (``schedule``), where and how
it runs (``placement``), the Trainer with weight averaging and evaluation (``engine``), the one loop that hands
events to sinks and owns resuming (``executor``), seeds stacked into one model (``stacked``)."""
