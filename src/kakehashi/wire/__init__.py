"""The OpenAI JSON shapes (requests, responses, stream chunks, errors). Imports only pydantic."""
