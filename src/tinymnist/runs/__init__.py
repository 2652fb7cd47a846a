"""Runs: the run record, its schema upgrades and checkpoint (``records``), loading a trained model
(``loading``), one run and many seeds (``runner``), the process supervisor (``supervise``), the TensorBoard
sink (``logsinks``)."""
