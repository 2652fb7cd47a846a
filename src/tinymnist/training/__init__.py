"""Training: the recipe and the run spec (``recipes``), the LR as a pure function (``schedule``), where and how
it runs (``placement``), the Trainer with weight averaging and evaluation (``engine``), the one loop that hands
events to sinks and owns resuming (``executor``), what a user's own model is promised (``user_models``)."""
