"""The run directory's file names (the module docstring of runs/records.py says what each holds)."""

HEADER, METRICS, WEIGHTS, STATE, STATE_JSON, RUN_SUMMARY, LOCK, MODEL_FILE, JOURNEY_FILE = (
    "recipe.json", "metrics.jsonl", "weights.safetensors", "state.safetensors", "state.json", "summary.json",
    ".lock", "model.py", "journey.toml")
