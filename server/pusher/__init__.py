"""The Pusher dialect: the `/app/{key}` endpoint and the HTTP API, for Laravel Echo."""
