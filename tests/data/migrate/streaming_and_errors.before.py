"""An assistant written for openai 0.28: streaming, embeddings, errors and async calls."""
import asyncio
import openai as oa

oa.api_base = "http://localhost:8000/v1"
oa.organization = "org-demo"
oa.api_key = "sk-demo"  # the key

MODELS = {"chat": "gpt-3.5-turbo", "complete": "text-davinci-003"}
EMBEDDING_MODEL = dict(model="text-search-ada-doc-001")


def stream(messages):
    """Print a streamed answer; the messages are plain dicts and stay so."""
    last = messages[-1]["content"]
    print("asking:", last)
    chunks = oa.ChatCompletion.create(model=MODELS["chat"], messages=messages, stream=True,
                                      request_timeout=30)
    for chunk in chunks:
        delta = chunk["choices"][0]["delta"]
        print(delta.get("content", ""), end="")


def embed(text):
    result = oa.Embedding.create(input=[text], engine="text-similarity-babbage-001")
    return result["data"][0]["embedding"]


async def ask(prompt):
    answer = await oa.Completion.acreate(model="text-davinci-003", prompt=prompt)
    return answer["choices"][0]["text"]


try:
    stream([{"role": "user", "content": "Hi"}])
except oa.error.RateLimitError:
    print("slow down")
except oa.error.InvalidRequestError as exc:
    print("bad request", exc)
asyncio.run(ask("Once upon a time"))
