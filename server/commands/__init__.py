"""The `opspush` command and its processes: serve under uvicorn, workers, demo."""
