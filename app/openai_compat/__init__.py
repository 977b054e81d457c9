"""The OpenAI-compatible API (/v1): OpenAI's shapes over the same generations, credits and
storage as /api/v1."""
