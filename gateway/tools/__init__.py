"""The agent's tools (Realtime function calling): the registry, the built-ins and user modules (:mod:`.registry`)."""
