"""The HTTP layer: thin routes over the gateway, one module per OpenAI resource."""
