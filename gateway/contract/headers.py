"""Names of the headers the gateway adds to answers of its own making, where more than one
wing writes or reads them."""

# On an answer replayed from an idempotency record (the backend was not called again).
REPLAY_HEADER = "Idempotent-Replayed"
