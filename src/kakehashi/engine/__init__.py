"""The inference engine: token ids in, token ids (and logprobs) out.

The engine knows nothing of HTTP or of the OpenAI wire format.
"""
